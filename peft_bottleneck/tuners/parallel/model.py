from __future__ import annotations

from ...target_modules import AdapterPositions, colliding_names
from ..bottleneck.model import BottleneckModel
from .config import ParallelAdapterConfig
from .layer import ParallelAdapterLayer


def detach_input_sources(model) -> None:
    for module in model.modules():
        if isinstance(module, ParallelAdapterLayer):
            module.detach_input_source()


def input_source_kwargs(model, peft_config, current_key: str) -> dict:
    """``{"input_source": module}`` when ``peft_config.input_from`` maps the target to a sibling's input."""
    for target, source in (peft_config.input_from or {}).items():
        if current_key == target or current_key.endswith("." + target):
            source_key = current_key[: len(current_key) - len(target)] + source
            try:
                return {"input_source": model.get_submodule(source_key)}
            except AttributeError:
                raise ValueError(
                    f"`input_from` maps {target!r} to {source!r}, but the model has no module {source_key!r} "
                    f"next to {current_key!r}."
                ) from None
    return {}


class ParallelAdapterModel(BottleneckModel):
    """Adds parallel adapters (He et al. 2022) beside the feed-forward blocks, or beside chosen linear layers."""

    prefix: str = "parallel_adapter_"
    tuner_layer_cls = ParallelAdapterLayer

    @staticmethod
    def default_targets(peft_config: ParallelAdapterConfig, positions: AdapterPositions):
        if peft_config.input_from is None:
            peft_config.input_from = dict(positions.ffn_input_from)
        return list(positions.ffn_block), colliding_names(positions.attention_output, positions.ffn_block)

    def layer_kwargs(self, peft_config, adapter_name: str, current_key: str) -> dict:
        return input_source_kwargs(self.model, peft_config, current_key)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        detach_input_sources(self.model)
        return super()._unload_and_optionally_merge(*args, **kwargs)
