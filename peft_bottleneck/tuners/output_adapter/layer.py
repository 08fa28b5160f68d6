from __future__ import annotations

from ..base.layer import AdapterLayer


class OutputAdapterLayer(AdapterLayer):
    """``head(h) + s * W_up f(W_down h)`` on the LM head; the base head (and its tie) is untouched."""

    prefix = "output_adapter_"
    adapter_kind = "Output"

    def width_reference(self, in_features: int) -> int:
        return in_features  # the hidden size, not the vocabulary
