"""A Hub-compatible server for the tests: olah (PyPI) serving git repositories from a local folder, offline, on
127.0.0.1, behind a small proxy that answers 404 for files a repository does not have.

Why the proxy: olah answers a missing file with 401 or 500 where the Hub answers 404 ("EntryNotFound"), and
transformers probes optional files (a base model's ``adapter_config.json``, ``generation_config.json``, tokenizer
files ...): with 401/500 those probes raise instead of returning "not there". Every file that exists, every revision
and every metadata call still goes to olah.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import re
from pathlib import Path

RESOLVE = re.compile(r"^/(?:(?P<type>models|datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=tests", "-c", "user.email=tests@localhost",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


class Hub:
    """olah over ``root/mirrors`` plus the 404 proxy; ``publish`` commits a folder as a repo revision."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors" / "models"
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.olah_port, self.port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.missing: list[str] = []  # probes answered 404 by the proxy
        self._olah = None
        self._proxy = None

    def publish(self, repo_id: str, files: Path, message: str = "update") -> str:
        """Commit the files of ``files`` as the next revision of ``repo_id`` on ``main``; returns the commit."""
        repo = self.mirrors / repo_id
        if not repo.exists():
            repo.mkdir(parents=True)
            git(repo, "init", "-q", "-b", "main")
        for old in repo.iterdir():
            if old.name != ".git":
                subprocess.run(["rm", "-rf", str(old)], check=True)
        subprocess.run(["cp", "-r", *[str(p) for p in files.iterdir()], str(repo)], check=True)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", message)
        return git(repo, "rev-parse", "HEAD")

    def has_file(self, repo_id: str, revision: str, path: str) -> bool:
        repo = self.mirrors / repo_id
        if not (repo / ".git").exists():
            return False
        done = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{revision}:{path}"], capture_output=True)
        return done.returncode == 0

    def start(self) -> Hub:
        config = self.root / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {self.olah_port}\nrepos-path = "{self.root / "cache"}"\n'
            f'mirrors-path = ["{self.root / "mirrors"}"]\n[accessibility]\noffline = true\n'
        )
        log = open(self.root / "olah.log", "w")
        self._olah = subprocess.Popen(["olah-cli", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                      cwd=self.root)
        self._proxy = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        deadline = time.time() + 90
        while time.time() < deadline:  # olah answers 500 on "/": wait for a real route
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.olah_port}/api/models/none/none/revision/main",
                                       timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers: up
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        else:
            raise RuntimeError(f"olah did not start: {(self.root / 'olah.log').read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
        if self._olah is not None:
            self._olah.terminate()
            self._olah.wait(timeout=30)

    def _handler(self):
        hub = self

        class Proxy(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method: str) -> None:
                match = RESOLVE.match(self.path.split("?")[0])
                if match and not hub.has_file(match["repo"], match["rev"], urllib.request.unquote(match["path"])):
                    hub.missing.append(self.path)
                    self.send_response(404)
                    self.send_header("x-error-code", "EntryNotFound")
                    self.send_header("x-error-message", "Entry not found")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = None
                if method in ("POST", "PUT"):
                    body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = urllib.request.Request(f"http://127.0.0.1:{hub.olah_port}{self.path}", data=body,
                                                 method=method, headers={k: v for k, v in self.headers.items()
                                                                         if k.lower() != "host"})
                try:
                    response = urllib.request.urlopen(request, timeout=60)
                    status, headers, content = response.status, response.headers, response.read()
                except urllib.error.HTTPError as error:
                    status, headers, content = error.code, error.headers, error.read()
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD answer carries the size of the file it describes
                length = headers.get("content-length") if method == "HEAD" else None
                self.send_header("content-length", length or str(len(content)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(content)

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

            def do_POST(self):
                self._forward("POST")

        return Proxy
