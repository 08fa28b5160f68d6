"""The Hub over real HTTP: adapters pulled from olah, a Hub-compatible server started here (see hub_server.py), by
`PeftModel.from_pretrained` (``main`` and an older commit as ``revision``), ``AutoPeftModel...`` (which pulls the
base model too), transformers' ``load_adapter`` and the AdapterHub converter; every client runs in a fresh process
that never imports peft_bottleneck (``HF_ENDPOINT`` must be set before ``huggingface_hub`` is imported)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from peft import get_peft_model
from safetensors.torch import save_file

from hub_server import Hub
from peft_bottleneck import BottleneckConfig

AH_CASE = Path(__file__).parent / "fixtures" / "adapterhub" / "cases" / "bert_seq_bn"
AH_BASE = Path(__file__).parent / "fixtures" / "adapterhub" / "bases" / "bert"
IDS = [[5, 9, 11, 3, 7]]


def adapter_folder(folder: Path, seed: int) -> torch.Tensor:
    base = tiny_model("bert")
    torch.manual_seed(seed)
    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS", init_weights=False)).eval()
    model.peft_config["default"].base_model_name_or_path = "tester/tiny-bert"
    model.save_pretrained(folder)
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    server = Hub(root).start()
    tiny_model("bert").save_pretrained(root / "base")
    server.publish("tester/tiny-bert", root / "base")
    server.expected = {}
    for version in (1, 2):
        folder = root / f"adapter-v{version}"
        server.expected[version] = adapter_folder(folder, seed=version)
        server.commits = getattr(server, "commits", []) + [server.publish("tester/bottleneck", folder, f"v{version}")]
    server.publish("tester/adapterhub-seq-bn", AH_CASE / "adapter")
    server.publish("tester/adapterhub-bert-base", AH_BASE)
    yield server
    server.stop()


def client(hub, script: str, tmp_path) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/",
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PULL = """
import json, sys, torch, transformers as tf
from peft import PeftModel, AutoPeftModelForSequenceClassification
ids = torch.tensor(%r)
out = {}
for name, revision in %r:
    base = tf.AutoModelForSequenceClassification.from_pretrained("tester/tiny-bert").eval()
    model = PeftModel.from_pretrained(base, "tester/bottleneck", revision=revision).eval()
    out[name] = model(input_ids=ids).logits.tolist()
auto = AutoPeftModelForSequenceClassification.from_pretrained("tester/bottleneck").eval()
out["auto"] = auto(input_ids=ids).logits.tolist()
plain = tf.AutoModelForSequenceClassification.from_pretrained("tester/tiny-bert").eval()
plain.load_adapter("tester/bottleneck")
out["load_adapter"] = plain(input_ids=ids).logits.tolist()
out["imported_by_hook"] = "peft_bottleneck" in sys.modules
print(json.dumps(out))
"""


def test_pull_main_an_older_commit_auto_and_load_adapter(hub, tmp_path):
    revisions = [("main", "main"), ("first", hub.commits[0]), ("second", hub.commits[1])]
    out = client(hub, PULL % (IDS, revisions), tmp_path)
    for name, version in (("main", 2), ("first", 1), ("second", 2), ("auto", 2), ("load_adapter", 2)):
        torch.testing.assert_close(torch.tensor(out[name]), hub.expected[version], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hub.expected[1], hub.expected[2])
    assert out["imported_by_hook"]


CONVERT = """
import json, torch, transformers as tf
from peft_bottleneck.convert import from_adapterhub
from safetensors.torch import load_file
base = tf.AutoModelForSequenceClassification.from_pretrained("tester/adapterhub-bert-base").eval()
model = from_adapterhub("tester/adapterhub-seq-bn", base, revision="main").eval()
inputs = {k.removeprefix("input."): v for k, v in load_file(%r).items() if k.startswith("input.")}
print(json.dumps({"logits": model(**inputs).logits.tolist(), "summary": model.conversion_report.summary()}))
"""


def test_converter_pulls_an_adapterhub_repo(hub, tmp_path):
    from safetensors.torch import load_file

    out = client(hub, CONVERT % str(AH_BASE / "expected.safetensors"), tmp_path)
    expected = load_file(AH_CASE / "expected.safetensors")["logits"]
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert "tester/adapterhub-seq-bn" in out["summary"]


class UploadDouble:
    """An in-test HTTP double of the Hub's upload endpoints (create-repo, validate-yaml, preupload, commit): no
    installable server
    accepts uploads offline, so ``push_to_hub`` is tested against this, which records what a real Hub would store."""

    def __init__(self):
        import http.server
        import threading

        from hub_server import free_port

        self.files, self.requests = {}, []
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, payload, status=200):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                double.requests.append(("GET", self.path))
                if self.path.startswith("/api/whoami"):
                    return self._reply({"name": "tester", "type": "user", "auth": {"accessToken": {"role": "write"}}})
                self._reply({"error": "not found"}, 404)

            def do_POST(self):
                import base64

                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                double.requests.append(("POST", self.path))
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = "/".join(p for p in (request.get("organization"), request["name"]) if p)
                    repo_id = repo_id if "/" in repo_id else f"tester/{repo_id}"
                    return self._reply({"url": f"http://127.0.0.1:{double.port}/{repo_id}", "name": repo_id})
                if self.path == "/api/validate-yaml":  # the model card's metadata: accepted
                    return self._reply({"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
                if "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            double.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo_id = self.path.split("/api/models/")[1].split("/commit/")[0]
                    return self._reply({"commitUrl": f"http://127.0.0.1:{double.port}/{repo_id}/commit/" + "0" * 40,
                                        "commitOid": "0" * 40})
                self._reply({"error": "not found"}, 404)

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


PUSH = """
import json, sys, torch, transformers as tf
import peft_bottleneck
from peft import get_peft_model
config = tf.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                       vocab_size=64, pad_token_id=0)
base = tf.AutoModelForSequenceClassification.from_config(config)
base.config._name_or_path = base.name_or_path = "tester/tiny-bert"
model = get_peft_model(base, peft_bottleneck.CompacterConfig(task_type="SEQ_CLS", bottleneck_size=8))
if sys.argv[1] == "helper":
    from peft_bottleneck.hub import push_adapter_to_hub
    push_adapter_to_hub(model, "tester/pushed", token="hf_test")
else:
    model.push_to_hub("tester/pushed", token="hf_test")
print(json.dumps({"version": peft_bottleneck.__version__}))
"""


@pytest.mark.parametrize("how", ["helper", "push_to_hub"])
def test_push_writes_a_usable_repo(how, tmp_path):
    """``push_adapter_to_hub`` keeps the full model card; transformers' ``push_to_hub`` (inherited by PeftModel)
    replaces it with a generic card, but the config and weights it pushes load all the same."""
    double = UploadDouble()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{double.port}", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
        done = subprocess.run([sys.executable, "-c", PUSH, how], capture_output=True, text=True, env=env, cwd="/",
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + str(double.requests)
    finally:
        double.server.shutdown()
    version = json.loads(done.stdout.strip().splitlines()[-1])["version"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(double.files)
    config = json.loads(double.files["adapter_config.json"])
    assert config["peft_type"] == "COMPACTER" and config["base_model_name_or_path"] == "tester/tiny-bert"
    card = double.files["README.md"].decode()
    if how == "helper":
        assert "base_model: tester/tiny-bert" in card and "- compacter" in card and f"peft-bottleneck-{version}" in card
        assert f"peft-bottleneck {version}" in card and "CompacterConfig (PEFT type `COMPACTER`)" in card
    # what was pushed loads and computes, in this process
    folder = tmp_path / "pushed"
    folder.mkdir()
    for name, content in double.files.items():
        (folder / name).write_bytes(content)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_model("bert"), folder)
    assert type(loaded.peft_config["default"]).__name__ == "CompacterConfig"
