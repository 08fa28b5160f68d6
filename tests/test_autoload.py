"""A process that never imports peft_bottleneck still loads its adapters: the start-up hook installed with the
package (``peft_bottleneck_autoload.pth``) registers the tuner types when ``peft`` is imported, and costs a process
that never imports ``peft`` no import at all. Checked in fresh processes, for a wheel and for an editable install,
each in a new venv (the test environment's own packages reach it through PYTHONPATH, which runs no .pth files)."""

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import tiny_model
from peft import get_peft_model

from peft_bottleneck import AdapterControllerConfig, BottleneckConfig

REPO = Path(__file__).resolve().parents[1]

LOAD = """
import sys
assert "peft_bottleneck" not in sys.modules and "torch" not in sys.modules, "imported at start-up"
import torch, transformers as tf
from peft import PeftModel, AutoPeftModelForSequenceClassification
config = tf.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                       vocab_size=64, pad_token_id=0)
adapter, base_dir = sys.argv[1], sys.argv[2]
base = tf.AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
model = PeftModel.from_pretrained(base, adapter).eval()
ids = torch.tensor([[5, 6, 7, 8]])
out = model(input_ids=ids).logits
auto = AutoPeftModelForSequenceClassification.from_pretrained(adapter).eval()
plain = tf.AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
plain.load_adapter(adapter)
assert torch.allclose(auto(input_ids=ids).logits, out) and torch.allclose(plain(input_ids=ids).logits, out)
print("LOADED", type(model.peft_config["default"]).__name__, sys.modules["peft_bottleneck"].__file__)
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoload")
    base = tiny_model("bert")
    base.save_pretrained(root / "base")
    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS", init_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(root / "base")
    model.save_pretrained(root / "adapter")
    return root


def run(python, *args, env=None, cwd="/"):
    # run away from the repository: `python -c` puts the working directory first on sys.path
    done = subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_this_environment_loads_without_an_import(saved):
    out = run(sys.executable, "-c", LOAD, saved / "adapter", saved / "base")
    assert "LOADED BottleneckConfig" in out


def test_no_cost_without_peft_and_it_can_be_turned_off(saved):
    out = run(sys.executable, "-c", "import sys; print(sorted(m for m in sys.modules if m.startswith(('peft', 'torch',"
              " 'transformers'))))")
    assert out.strip() == "['peft_bottleneck_autoload']"
    env = {**os.environ, "PEFT_BOTTLENECK_AUTOLOAD": "0"}
    done = subprocess.run([sys.executable, "-c", "import sys, peft; print('peft_bottleneck' in sys.modules)"],
                          capture_output=True, text=True, env=env, cwd="/")
    assert done.stdout.strip() == "False"


def fresh_venv(path):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    return path / "bin" / "python"


@pytest.mark.parametrize("install", ["wheel", "editable"])
def test_a_clean_install_loads_without_an_import(install, saved, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    if install == "wheel":
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
        target = next((tmp_path / "dist").glob("*.whl"))
        run(python, "-m", "pip", "install", "-q", "--no-deps", target)
    else:
        run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", REPO,
            env={**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]})
    # the dependencies come from this environment; PYTHONPATH runs none of its .pth files (so not its own hook)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    out = run(python, "-c", LOAD, saved / "adapter", saved / "base", env=env)
    assert "LOADED BottleneckConfig" in out
    expected_copy = tmp_path / "venv" if install == "wheel" else REPO
    assert f" {expected_copy}" in out


def test_a_controller_loads_too(tmp_path):
    base = tiny_model("bert")
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, AdapterControllerConfig(tasks=["a", "b"], task_type="SEQ_CLS", default_task="a"))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    out = run(sys.executable, "-c", LOAD, tmp_path / "adapter", tmp_path / "base")
    assert "LOADED AdapterControllerConfig" in out


def test_a_hook_left_behind_by_a_removed_install_stays_silent(tmp_path):
    # an editable install whose folder is gone (or a half-uninstalled wheel) keeps the .pth: every Python start
    # must not print a traceback for it. -S: no site-packages, so the module the hook names cannot be found.
    line = (REPO / "peft_bottleneck_autoload.pth").read_text().strip()
    assert line.startswith("import ")  # site only executes .pth lines that start with "import"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", line], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
