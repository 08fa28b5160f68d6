"""A learning rate per adapter kind for a good first run without a search.

The rates come from the accuracy benchmark's grids (MiniLM-L6, AdamW, batch 32, 2 epochs, 10% warm-up): each
kind's rate is the one with the best validation accuracy on the bundled sentiment task (76 optimizer steps);
``python benchmarks/learning_rates.py`` redoes the choice from the stored runs and checks it on the bundled topic
task (benchmarks/results/learning_rates.md). That check shows their limit: with only 38 steps, most kinds do best
at three or more times these rates. They suit budgets of a hundred to a few thousand steps on encoders of this size;
a very short run wants a larger rate, a long run or a much larger model usually a smaller one. The hypernetwork's
rate is the better of the two measured in benchmarks/multitask.py.
"""

from __future__ import annotations

# kind: rate. Chosen by benchmarks/learning_rates.py (tests/test_learning_rates.py checks this table against it);
# hypernetwork: benchmarks/results/multitask_hyper_lr3e-4_minilm.json against multitask_hyper_minilm.json (2e-3).
RECOMMENDED_LEARNING_RATES = {
    "houlsby": 3e-3,
    "pfeiffer": 3e-3,
    "parallel": 3.33e-4,
    "compacter": 1e-2,
    "compacter++": 1e-2,
    "low-rank": 3e-3,
    "hypernetwork": 3e-4,
}


def adapter_kind_name(config) -> str:
    """The kind a config trains, as named in ``RECOMMENDED_LEARNING_RATES`` (a controller: its adapters' kind)."""
    from .tuners import (AdapterControllerConfig, BottleneckConfig, CompacterConfig, HyperAdapterConfig,
                         LowRankConfig, ParallelAdapterConfig)

    if isinstance(config, AdapterControllerConfig):
        return adapter_kind_name(config.adapter if config.adapter is not None else BottleneckConfig())
    if isinstance(config, HyperAdapterConfig):
        return "hypernetwork"
    if isinstance(config, CompacterConfig):
        return "compacter++" if config.placement == "pfeiffer" else "compacter"
    if isinstance(config, LowRankConfig):
        return "low-rank"
    if isinstance(config, ParallelAdapterConfig):
        return "parallel"
    if isinstance(config, BottleneckConfig):
        return "pfeiffer" if config.placement == "pfeiffer" else "houlsby"
    raise TypeError(f"no recommended learning rate for {type(config).__name__}; kinds with one: "
                    f"{sorted(RECOMMENDED_LEARNING_RATES)}")


def recommended_learning_rate(config) -> float:
    """The learning rate to start with for ``config``'s adapter kind (see the module docstring for its origin)."""
    return RECOMMENDED_LEARNING_RATES[adapter_kind_name(config)]
