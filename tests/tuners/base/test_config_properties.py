"""Property tests over every config class: any value of any field either builds a config that saves, reloads and
runs on a tiny model, or raises a ValueError / TypeError that names the field; never anything else."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import tiny_inputs, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import PeftConfig, PeftModel, get_peft_model

import peft_bottleneck as pb

CONFIGS = {
    "bottleneck": pb.BottleneckConfig,
    "parallel": pb.ParallelAdapterConfig,
    "compacter": pb.CompacterConfig,
    "output": pb.OutputAdapterConfig,
    "controller": pb.AdapterControllerConfig,
}
BASE = {"controller": dict(tasks=["a", "b"], default_task="a"), "compacter": dict(bottleneck_size=8)}
MODEL = {"output": "llama"}
SKIP = {"peft_type", "task_type", "auto_mapping", "base_model_name_or_path", "revision", "peft_version",
        "runtime_config", "format_version", "adapter", "output_adapter"}

values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]), st.text(max_size=8),
    st.sampled_from(["relu", "gelu", "tanh", "learned", "channel", "houlsby", "pfeiffer", "bert", "no", "false",
                     "post_add", "normal", "uniform", "unchecked", "all", "bottleneck_only"]),
    st.lists(st.integers(-1, 3), max_size=3), st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    st.sampled_from([np.float32(2.0), np.int64(8), np.float64(math.nan), np.bool_(True)]),
)


def fields(cls):
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in SKIP)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_builds_a_working_config_or_is_refused_by_name(kind, data, tmp_path_factory):
    cls = CONFIGS[kind]
    field = data.draw(st.sampled_from(fields(cls)), label="field")
    value = data.draw(values, label="value")
    model_type = MODEL.get(kind, "bert")
    task = "CAUSAL_LM" if model_type == "llama" else "SEQ_CLS"
    base = {k: v for k, v in BASE.get(kind, {}).items() if not (field == "tasks" and k == "default_task")}
    try:
        config = cls(task_type=task, **{**base, field: value})
        model = get_peft_model(tiny_model(model_type), config).eval()
    except (ValueError, TypeError) as error:
        assert field in str(error), f"{field}={value!r}: {error}"
        return
    folder = tmp_path_factory.mktemp("config")
    model.save_pretrained(folder)
    assert type(PeftConfig.from_pretrained(folder)) is cls
    inputs = tiny_inputs(model_type)
    kwargs = {"task": config.tasks[0]} if kind == "controller" else {}
    with torch.no_grad():
        expected = model(**inputs, **kwargs).logits
        loaded = PeftModel.from_pretrained(tiny_model(model_type), folder).eval()
        got = loaded(**inputs, **kwargs).logits
    assert torch.isfinite(got).all() or not torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, equal_nan=True)
