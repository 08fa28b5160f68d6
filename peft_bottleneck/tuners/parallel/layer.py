from __future__ import annotations

from ..base.layer import AdapterLayer


class ParallelAdapterLayer(AdapterLayer):
    """A module (or block) with parallel adapters: ``F(x) + s * A(x)``, ``x`` its input or a sibling's."""

    prefix = "parallel_adapter_"
    adapter_kind = "Parallel"
