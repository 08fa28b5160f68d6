from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..bottleneck.layer import BottleneckLayer, _projection_dims


class ParallelAdapterLayer(BottleneckLayer):
    """``F(x) + s * W_up f(W_down x)``: the adapter reads the module's input, or the input of ``input_source``.

    A block whose output projection is a separate module from its input (BERT's ``intermediate`` ->
    ``output.dense``) is spanned with a forward pre-hook on ``input_source`` that hands its input to this layer;
    the layer consumes it on its next call, so nothing outlives the forward (or a checkpointed re-forward).
    """

    adapter_layer_names = ("parallel_adapter_down", "parallel_adapter_up", "parallel_adapter_scale")
    other_param_names = ("parallel_adapter_dropout", "non_linearity", "scaling")
    adapter_kind = "Parallel"

    def __init__(self, base_layer, adapter_name, config, input_source: Optional[nn.Module] = None, **kwargs):
        adapter_in_features = _projection_dims(input_source)[0] if input_source is not None else None
        super().__init__(base_layer, adapter_name, config, adapter_in_features=adapter_in_features, **kwargs)
        self._tapped_input: Optional[torch.Tensor] = None
        # a plain flag for forward: torch.compile cannot trace the hook handle itself
        self.reads_tapped_input = input_source is not None
        self._input_tap = None
        if input_source is not None:
            self._input_tap = input_source.register_forward_pre_hook(self._store_input, with_kwargs=True)

    def default_adapter_in_features(self) -> int:
        return self.in_features

    def _store_input(self, module, args, kwargs):
        self._tapped_input = args[0] if args else next(iter(kwargs.values()))

    def detach_input_source(self) -> None:
        if self._input_tap is not None:
            self._input_tap.remove()
            self._input_tap = None
        self.reads_tapped_input = False
        self._tapped_input = None

    def take_adapter_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reads_tapped_input:
            return x
        tapped, self._tapped_input = self._tapped_input, None
        if tapped is None:
            raise RuntimeError(
                "This parallel adapter reads the input of another module (see `input_from`), but that module did "
                "not run before it. Call the whole block, or target modules that read their own input."
            )
        return tapped
