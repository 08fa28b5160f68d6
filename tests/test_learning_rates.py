"""The recommended learning rate per adapter kind: every kind maps to its rate, and the table is the one the
benchmark chose (benchmarks/learning_rates.py writes benchmarks/results/learning_rates.json from stored runs)."""

import json
from pathlib import Path

import pytest

from peft_bottleneck import (RECOMMENDED_LEARNING_RATES, AdapterControllerConfig, BottleneckConfig, CompacterConfig,
                             HyperAdapterConfig, LowRankConfig, OutputAdapterConfig, ParallelAdapterConfig,
                             recommended_learning_rate)
from peft_bottleneck.learning_rates import adapter_kind_name

CHOSEN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "learning_rates.json"


@pytest.mark.parametrize("config, kind", [
    (BottleneckConfig(), "houlsby"),
    (BottleneckConfig(placement="pfeiffer"), "pfeiffer"),
    (ParallelAdapterConfig(), "parallel"),
    (CompacterConfig(), "compacter"),
    (CompacterConfig(placement="pfeiffer"), "compacter++"),
    (LowRankConfig(), "low-rank"),
    (AdapterControllerConfig(tasks=["a", "b"]), "houlsby"),  # a controller trains its adapters' kind
    (AdapterControllerConfig(tasks=["a"], adapter=CompacterConfig(placement="pfeiffer")), "compacter++"),
    (AdapterControllerConfig(tasks=["a", "b"], adapter=HyperAdapterConfig()), "hypernetwork"),
])
def test_every_kind_has_its_rate(config, kind):
    assert adapter_kind_name(config) == kind
    assert recommended_learning_rate(config) == RECOMMENDED_LEARNING_RATES[kind] > 0


def test_a_config_without_a_rate_is_named():
    with pytest.raises(TypeError, match="OutputAdapterConfig.*houlsby"):
        recommended_learning_rate(OutputAdapterConfig())


def test_the_table_is_the_benchmarks_choice():
    chosen = json.loads(CHOSEN.read_text())
    assert chosen, "no kind was chosen"
    for kind, result in chosen.items():
        assert RECOMMENDED_LEARNING_RATES[kind] == result["learning_rate"], kind
