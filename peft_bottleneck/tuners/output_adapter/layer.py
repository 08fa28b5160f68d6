from __future__ import annotations

from ..parallel.layer import ParallelAdapterLayer


class OutputAdapterLayer(ParallelAdapterLayer):
    """``head(h) + s * W_up f(W_down h)`` on the LM head; the base head (and its tie) is untouched."""

    adapter_layer_names = ("output_adapter_down", "output_adapter_up", "output_adapter_scale")
    other_param_names = ("output_adapter_dropout", "non_linearity", "scaling")
    adapter_kind = "Output"
    width_from_input = True
