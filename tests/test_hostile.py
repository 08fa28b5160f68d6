"""Hostile input: damaged adapter folders on all three load paths and every tuner type, failing saves, odd names,
wrong routing lists, pruning edge cases. Every case either works or raises a clear error, and nothing is left
damaged: the model (outputs, state dict, layers, peft_config) and the folder are exactly as before."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import peft_bottleneck as pb
from peft_bottleneck import AdapterLayer

TYPES = {
    "bottleneck": lambda: pb.BottleneckConfig(task_type="CAUSAL_LM", bottleneck_size=4, init_weights=False),
    "parallel": lambda: pb.ParallelAdapterConfig(task_type="CAUSAL_LM", bottleneck_size=4, init_weights=False),
    "compacter": lambda: pb.CompacterConfig(task_type="CAUSAL_LM", bottleneck_size=8, init_weights=False),
    "output": lambda: pb.OutputAdapterConfig(task_type="CAUSAL_LM", bottleneck_size=4, init_weights=False),
    "controller": lambda: pb.AdapterControllerConfig(tasks=["a", "b"], default_task="a", task_type="CAUSAL_LM",
                                                     adapter=pb.BottleneckConfig(bottleneck_size=4,
                                                                                 init_weights=False)),
}


def weights_file(folder):
    return Path(folder) / "adapter_model.safetensors"


def edit_config(folder, **changes):
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


DELETE = object()


def truncate(folder):
    data = weights_file(folder).read_bytes()
    weights_file(folder).write_bytes(data[: len(data) // 2])


def empty(folder):
    weights_file(folder).write_bytes(b"")


def random_bytes(folder):
    weights_file(folder).write_bytes(os.urandom(4096))


def no_tensors(folder):
    save_file({}, weights_file(folder))


def wrong_shape(folder):
    tensors = load_file(weights_file(folder))
    key = next(k for k in tensors if re.search(r"_down_(weight|s)$", k))
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(tensors, weights_file(folder))


def missing_up(folder):
    tensors = load_file(weights_file(folder))
    save_file({k: v for k, v in tensors.items() if not re.search(r"_up_(weight|s|t|w)$", k)}, weights_file(folder))


def base_weight_key(folder):
    tensors = load_file(weights_file(folder))
    tensors["base_model.model.model.embed_tokens.weight"] = torch.full((64, 32), 7.0)
    save_file(tensors, weights_file(folder))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/peft_bottleneck_pwned",))


def pickle_only(folder):
    weights_file(folder).unlink()
    with open(Path(folder) / "adapter_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)


DAMAGE = {
    "truncated": truncate,
    "empty": empty,
    "random_bytes": random_bytes,
    "no_tensors": no_tensors,
    "wrong_shape": wrong_shape,
    "missing_up": missing_up,
    "base_weight_key": base_weight_key,
    "pickle_only": pickle_only,
    "scaling_nan": lambda f: edit_config(f, scaling=float("nan")),
    "target_modules_5": lambda f: edit_config(f, target_modules=5),
    "layer_map_wrong_type": lambda f: edit_config(f, layer_map=[1, 2]),
    "bool_as_string": lambda f: edit_config(f, inference_mode="no"),
    "unknown_peft_type": lambda f: edit_config(f, peft_type="NOT_A_TYPE"),
    "width_missing": lambda f: edit_config(f, bottleneck_size=DELETE, reduction_factor=1),
}
NOT_FOR = {("scaling_nan", "controller"), ("width_missing", "controller")}  # fields the controller's top level lacks


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def saved_adapter(kind, folder):
    model = get_peft_model(tiny_model("llama"), TYPES[kind]())
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def damaged(tmp_path, request):
    kind, damage = request.param
    folder = saved_adapter(kind, tmp_path / "adapter")
    DAMAGE[damage](folder)
    return kind, folder


CASES = [(k, d) for k in TYPES for d in DAMAGE if (d, k) not in NOT_FOR]


@pytest.mark.parametrize("damaged", CASES, indirect=True, ids=[f"{k}-{d}" for k, d in CASES])
def test_from_pretrained_fails_cleanly(damaged):
    kind, folder = damaged
    base = tiny_model("llama")
    before, inputs = state(base), tiny_inputs("llama")
    with torch.no_grad():
        outputs = base(**inputs).logits
    with pytest.raises((ValueError, TypeError, OSError, RuntimeError)) as error:
        PeftModel.from_pretrained(base, folder)
    assert str(error.value)
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())
    assert_same_state(before, state(base))
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, outputs)
    assert not Path("/tmp/peft_bottleneck_pwned").exists()


@pytest.mark.parametrize("damaged", CASES, indirect=True, ids=[f"{k}-{d}" for k, d in CASES])
def test_load_adapter_fails_cleanly(damaged):
    kind, folder = damaged
    model = get_peft_model(tiny_model("llama"), TYPES[kind]()).eval()
    before, inputs = state(model), tiny_inputs("llama")
    with torch.no_grad():
        outputs = model(**inputs).logits
    with pytest.raises((ValueError, TypeError, OSError, RuntimeError)):
        model.load_adapter(folder, adapter_name="other")
    assert list(model.peft_config) == ["default"]
    assert all(set(m.settings) == {"default"} for m in model.modules() if isinstance(m, AdapterLayer))
    assert_same_state(before, state(model))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, outputs)


@pytest.mark.parametrize("damaged", [c for c in CASES if c[0] != "controller"], indirect=True,
                         ids=[f"{k}-{d}" for k, d in CASES if k != "controller"])
def test_transformers_load_adapter_fails_cleanly(damaged):
    kind, folder = damaged
    base = tiny_model("llama")
    before, inputs = state(base), tiny_inputs("llama")
    try:
        base.load_adapter(str(folder))
    except (ValueError, TypeError, OSError, RuntimeError, KeyError):
        assert not any(isinstance(m, AdapterLayer) for m in base.modules())
        assert_same_state(before, state(base))
        return
    pytest.fail("a damaged adapter loaded")


# -- saving ----------------------------------------------------------------------------------------------------


def test_a_save_that_fails_half_way_keeps_the_old_adapter_whole(tmp_path, monkeypatch):
    import peft.peft_model as peft_model

    model = get_peft_model(tiny_model("llama"), TYPES["bottleneck"]())
    model.save_pretrained(tmp_path)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = get_peft_model(tiny_model("llama"), pb.BottleneckConfig(task_type="CAUSAL_LM", bottleneck_size=8))

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(peft_model, "safe_save_file", failing_save)
    with pytest.raises(OSError, match="No space"):
        other.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupt_while_moving_files_into_place_puts_the_old_ones_back(tmp_path, monkeypatch):
    from peft_bottleneck import safety

    model = get_peft_model(tiny_model("llama"), TYPES["compacter"]())
    model.save_pretrained(tmp_path)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    calls = {"n": 0}
    real_replace = os.replace

    def interrupted(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # after the first new file is in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(safety.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        get_peft_model(tiny_model("llama"), TYPES["compacter"]()).save_pretrained(tmp_path)
    monkeypatch.setattr(safety.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == old
    PeftModel.from_pretrained(tiny_model("llama"), tmp_path)  # and it loads


def test_numpy_numbers_in_a_config_serialise(tmp_path):
    config = pb.BottleneckConfig(task_type="CAUSAL_LM", scaling=np.float32(2.0), bottleneck_size=np.int64(4),
                                 adapter_dropout=np.float64(0.1))
    model = get_peft_model(tiny_model("llama"), config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["scaling"], saved["bottleneck_size"], saved["adapter_dropout"]) == (2.0, 4, 0.1)


# -- configs, names, routing, pruning ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("scaling", float("nan")), ("scaling", float("inf")), ("reduction_factor", float("inf")),
    ("adapter_dropout", float("nan")), ("bottleneck_size", 2.5), ("use_gating", "no"), ("ln_after", "false"),
    ("original_ln_after", 1), ("non_linearity", "softplus"), ("init_weights", "xavier"),
])
def test_configs_refuse_what_they_cannot_honour(field, value):
    with pytest.raises((ValueError, TypeError), match=f"`{field}`"):
        pb.BottleneckConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("phm_init_range", float("inf")), ("shared_phm_rule", "no"), ("factorized_phm_W", "false"), ("learn_phm", "no"),
    ("phm_bias", "yes"), ("phm_dim", 0),
])
def test_compacter_fields_are_strict(field, value):
    with pytest.raises((ValueError, TypeError), match=f"`{field}`"):
        pb.CompacterConfig(**{field: value})


def test_controller_fields_are_strict():
    with pytest.raises(TypeError, match="`use_single_adapter`"):
        pb.AdapterControllerConfig(tasks=["a"], use_single_adapter="no")
    with pytest.raises(ValueError, match="`scaling`"):
        pb.AdapterControllerConfig(tasks=["a"], output_adapter=pb.OutputAdapterConfig(scaling=float("nan")))


@pytest.mark.parametrize("name", ["/tmp/evil", "../up", "a/b", "a.b", "", "__base__", " spaced", "-dash", 5])
def test_adapter_names_are_plain_identifiers(name, tmp_path):
    model = get_peft_model(tiny_model("llama"), TYPES["bottleneck"]())
    before = state(model)
    with pytest.raises((ValueError, TypeError)):
        model.add_adapter(name, TYPES["bottleneck"]())
    assert list(model.peft_config) == ["default"]
    assert_same_state(before, state(model))
    with pytest.raises(ValueError, match="not allowed"):
        get_peft_model(tiny_model("llama"), TYPES["bottleneck"](), adapter_name=name if isinstance(name, str) else "x/")


@pytest.mark.parametrize("names", [["default"] * 2, [], ["default"] * 4])
def test_routing_lists_must_match_the_batch(names):
    model = get_peft_model(tiny_model("llama"), TYPES["bottleneck"]()).eval()
    with pytest.raises(ValueError, match="per example|empty"):
        model(**tiny_inputs("llama", batch=3), adapter_names=names)


@pytest.mark.parametrize("task", [["a", "b"], [], torch.tensor([0, 1])])
def test_task_lists_must_match_the_batch(task):
    model = get_peft_model(tiny_model("llama"), TYPES["controller"]()).eval()
    with pytest.raises(ValueError, match="per example|empty"):
        model(**tiny_inputs("llama", batch=3), task=task)


def test_add_adapter_failing_on_its_second_target_leaves_nothing(monkeypatch):
    model = get_peft_model(tiny_model("llama"), TYPES["bottleneck"]())
    before = state(model)
    real = AdapterLayer.update_layer
    calls = {"n": 0}

    def fail_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AdapterLayer, "update_layer", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        model.add_adapter("other", pb.BottleneckConfig(task_type="CAUSAL_LM", bottleneck_size=4))
    assert list(model.peft_config) == ["default"]
    assert all(set(m.settings) == {"default"} for m in model.modules() if isinstance(m, AdapterLayer))
    assert_same_state(before, state(model))


def test_a_no_op_prune_records_no_layer_map(tmp_path):
    model = get_peft_model(tiny_model("llama"), TYPES["bottleneck"]())
    pb.prune_layers(model, drop=[])
    assert not getattr(model.base_model.model.config, "pruned_layer_map", None)
    model.save_pretrained(tmp_path)
    PeftModel.from_pretrained(tiny_model("llama"), tmp_path)  # the unpruned base still takes it


def test_an_adapter_without_a_layer_map_is_refused_on_a_pruned_base(tmp_path):
    get_peft_model(tiny_model("llama"), TYPES["bottleneck"]()).save_pretrained(tmp_path)
    edit_config(tmp_path, layer_map=DELETE)
    with pytest.raises(ValueError, match="layer map"):
        PeftModel.from_pretrained(pb.prune_layers(tiny_model("llama"), drop=[0]), tmp_path)


@pytest.mark.parametrize("kwargs", [dict(prune_to=0), dict(prune_to=-1), dict(prune_to=1.5),
                                    dict(methods=["nope"]), dict(angular_block=0)])
def test_callback_arguments_are_checked_up_front(kwargs):
    with pytest.raises((ValueError, TypeError)):
        pb.LayerImportanceCallback(**kwargs)


# -- models with a task head (modules_to_save) --------------------------------------------------------------------

HEAD_DAMAGE = ["truncated", "empty", "wrong_shape", "missing_up", "base_weight_key", "pickle_only"]
HEAD_TASKS = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification"}


def headed_model(task_type: str, seed: int = 0):
    import transformers as tf
    from conftest import CONFIGS

    torch.manual_seed(seed)
    return getattr(tf, HEAD_TASKS[task_type]).from_config(CONFIGS["bert"]()).eval()


def head_config(task_type: str):
    return pb.BottleneckConfig(task_type=task_type, bottleneck_size=4, init_weights=False)


@pytest.fixture
def damaged_with_head(tmp_path, request):
    task_type, damage = request.param
    torch.manual_seed(5)
    saved = get_peft_model(headed_model(task_type), head_config(task_type))
    with torch.no_grad():  # a head copy that differs from the base's head
        saved.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)
    folder = tmp_path / "adapter"
    saved.save_pretrained(folder)
    if damage == "base_weight_key":
        tensors = load_file(weights_file(folder))
        tensors["base_model.model.bert.embeddings.word_embeddings.weight"] = torch.full((64, 32), 7.0)
        save_file(tensors, weights_file(folder))
    else:
        DAMAGE[damage](folder)
    return task_type, folder


HEAD_CASES = [(t, d) for t in HEAD_TASKS for d in HEAD_DAMAGE]
HEAD_IDS = [f"{t}-{d}" for t, d in HEAD_CASES]


def test_heads_hold_the_damage_cases():  # the cases above are real damage: the undamaged folder loads
    assert {d for _, d in HEAD_CASES} <= set(DAMAGE)


@pytest.mark.parametrize("damaged_with_head", HEAD_CASES, indirect=True, ids=HEAD_IDS)
def test_load_adapter_with_a_task_head_fails_cleanly(damaged_with_head):
    task_type, folder = damaged_with_head
    model = get_peft_model(headed_model(task_type), head_config(task_type)).eval()
    before, inputs = state(model), tiny_inputs("bert")
    with torch.no_grad():
        outputs = model(**inputs).logits
    with pytest.raises((ValueError, TypeError, OSError, RuntimeError)):
        model.load_adapter(folder, adapter_name="other")
    assert list(model.peft_config) == ["default"]
    assert_same_state(before, state(model))  # no copy of the head left behind for "other"
    head = model.base_model.model.classifier
    assert set(head.modules_to_save) == {"default"} and head.active_adapters == ["default"]
    assert head.modules_to_save["default"].weight.requires_grad
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, outputs)


@pytest.mark.parametrize("damaged_with_head", HEAD_CASES, indirect=True, ids=HEAD_IDS)
def test_from_pretrained_with_a_task_head_fails_cleanly(damaged_with_head):
    task_type, folder = damaged_with_head
    base = headed_model(task_type)
    before, inputs = state(base), tiny_inputs("bert")
    with torch.no_grad():
        outputs = base(**inputs).logits
    with pytest.raises((ValueError, TypeError, OSError, RuntimeError)):
        PeftModel.from_pretrained(base, folder)
    assert_same_state(before, state(base))
    assert type(base.classifier).__name__ == "Linear"  # not left wrapped
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, outputs)


@pytest.mark.parametrize("damaged_with_head", HEAD_CASES, indirect=True, ids=HEAD_IDS)
def test_transformers_load_adapter_with_a_task_head_fails_cleanly(damaged_with_head):
    task_type, folder = damaged_with_head
    base = headed_model(task_type)
    before, inputs = state(base), tiny_inputs("bert")
    with torch.no_grad():
        outputs = base(**inputs).logits
    with pytest.raises((ValueError, TypeError, OSError, RuntimeError, KeyError)):
        base.load_adapter(str(folder))
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())
    assert type(base.classifier).__name__ == "Linear"
    assert_same_state(before, state(base))
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, outputs)


@pytest.mark.parametrize("task_type", list(HEAD_TASKS))
def test_set_adapter_stacks_on_a_model_with_a_task_head_and_the_last_head_is_used(task_type):
    model = get_peft_model(headed_model(task_type), head_config(task_type), adapter_name="a")
    model.add_adapter("b", head_config(task_type))
    head = model.base_model.model.classifier
    with torch.no_grad():
        head.modules_to_save["a"].weight.fill_(0.5)
        head.modules_to_save["b"].weight.fill_(-0.5)
    inputs = tiny_inputs("bert")
    model.eval()
    for stack, head_of in ((["a", "b"], "b"), (["b", "a"], "a")):
        model.set_adapter(stack)
        assert model.base_model.active_adapters == stack and head.active_adapters == [head_of]
        with torch.no_grad():
            stacked = model(**inputs).logits
            expected = model(**inputs, composition=pb.Stack(*stack)).logits
        assert torch.equal(stacked, expected)
        assert head.modules_to_save[head_of].weight.requires_grad
        assert not head.modules_to_save[stack[0]].weight.requires_grad
    with pytest.raises(ValueError, match="unknown adapter"):
        model.set_adapter(["a", "nope"])


@pytest.mark.parametrize("name", ["bottleneck_down", "bottleneck_down_weight", "my_parallel_adapter_x",
                                  "compacter_", "modules_to_save", "x_original_module"])
def test_names_that_collide_with_tensor_containers_are_refused_when_added(name):
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"))
    before = state(model)
    with pytest.raises(ValueError, match="must not contain a tensor-container prefix"):
        model.add_adapter(name, pb.BottleneckConfig(task_type="SEQ_CLS"))
    assert list(model.peft_config) == ["default"]
    assert_same_state(before, state(model))


@pytest.mark.parametrize("name", ["copy", "keys", "update", "to", "train"])
def test_names_of_parameter_dict_methods_are_refused_when_added(name):
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="method or attribute of torch's ParameterDict"):
        model.add_adapter(name, pb.BottleneckConfig(task_type="SEQ_CLS"))
    assert list(model.peft_config) == ["default"]


def test_the_name_rule_lets_ordinary_names_through_a_save_and_load(tmp_path):
    model = get_peft_model(tiny_model("bert"), head_config("SEQ_CLS"), adapter_name="sentiment-v2_large")
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "sentiment-v2_large",
                                       adapter_name="sentiment-v2_large")
    assert "sentiment-v2_large" in loaded.peft_config
