"""A learning rate per adapter kind for a good first run without a search.

The rates come from the accuracy benchmark's grids (MiniLM-L6, AdamW, batch 32, 2 epochs, 10% warm-up): each
kind's rate is the one chosen on the validation split of the bundled sentiment task, and it was then checked on the
bundled topic task; ``python benchmarks/learning_rates.py`` redoes the choice from the stored runs and reports how
far each rate lands from the best rate of the other task (benchmarks/results/learning_rates.md). They suit budgets
of a few hundred to a few thousand optimizer steps on encoders of this size; a much longer run or a much larger
model usually wants a smaller rate.
"""

from __future__ import annotations

# kind: rate. Chosen by benchmarks/learning_rates.py (tests/test_learning_rates.py checks this table against it).
RECOMMENDED_LEARNING_RATES = {
    "houlsby": 3e-3,
    "pfeiffer": 3e-3,
    "parallel": 3.33e-4,
    "compacter": 1e-2,
    "compacter++": 1e-2,
    "low-rank": 1e-2,
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
