from __future__ import annotations

from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner

from ...pruning import check_layer_map
from ...routing import Routing
from ...target_modules import AdapterPositions, colliding_names, positions_for
from .config import BottleneckConfig
from .layer import MERGE_ERROR, BottleneckLayer


class BottleneckModel(BaseTuner):
    """Adds sequential bottleneck adapters (Houlsby or Pfeiffer placement) to a transformers model.

    Example:

        ```py
        >>> import peft_bottleneck
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base_model, peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS"))
        ```
    """

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}  # positions come from `target_modules.ADAPTER_POSITIONS` by placement

    model_card_tags = ("peft-bottleneck",)

    def _post_injection_hook(self, model, config, adapter_name) -> None:
        # transformers models carry tags into the model card PEFT writes on save: name the type there, since a
        # process that never imported us cannot resolve it from adapter_config.json
        if hasattr(model, "add_model_tags"):
            model.add_model_tags([*self.model_card_tags, config.peft_type.value.lower()])

    def _check_new_adapter_config(self, config) -> None:
        super()._check_new_adapter_config(config)
        check_layer_map(config, self.model)

    def _prepare_adapter_config(self, peft_config, model_config):
        if peft_config.target_modules is None:
            positions = positions_for(model_config.get("model_type"), type(peft_config).__name__)
            targets, excluded = self.default_targets(peft_config, positions)
            peft_config.target_modules = set(targets)
            if excluded:
                if isinstance(peft_config.exclude_modules, str):
                    raise ValueError(
                        "`exclude_modules` as a regex cannot be combined with the default placement on this "
                        f"architecture; pass `target_modules` explicitly or exclude_modules as a list (the placement "
                        f"must also exclude {excluded})."
                    )
                peft_config.exclude_modules = set(peft_config.exclude_modules or ()) | set(excluded)
        return peft_config

    @staticmethod
    def default_targets(peft_config: BottleneckConfig, positions: AdapterPositions) -> tuple[list[str], list[str]]:
        """(targets, names to exclude) for the config's placement."""
        if peft_config.placement == "houlsby":
            return list(positions.attention_output + positions.ffn_output), []
        return list(positions.ffn_output), colliding_names(positions.attention_output, positions.ffn_output)

    def layer_class(self, peft_config, current_key: str) -> type:
        """The tuner layer class for a new target (one per tuner type here; the controller picks per target)."""
        return self.tuner_layer_cls

    def layer_kwargs(self, peft_config, adapter_name: str, current_key: str) -> dict:
        """Extra constructor arguments for a new tuner layer at ``current_key``."""
        return {}

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, parameter_name=None
    ):
        layer_kwargs = self.layer_kwargs(peft_config, adapter_name, current_key)
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config, **layer_kwargs)
            return
        layer_cls = self.layer_class(peft_config, current_key)
        new_module = layer_cls(target, adapter_name, peft_config, **layer_kwargs)
        if adapter_name not in self.active_adapters:
            # an added adapter is not trainable until it is activated
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if not hasattr(new_module, "base_layer"):
            # unloading: put the original module back as it was (PEFT's version assumes it has a `weight`, which
            # a wrapped block such as an MLP does not)
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _check_merge_allowed(self):
        raise ValueError(MERGE_ERROR.format(kind=self.tuner_layer_cls.adapter_kind))

    def tuner_layers(self):
        return (module for module in self.model.modules() if isinstance(module, self.tuner_layer_cls))

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Route each example to its adapter when ``adapter_names=[...]`` is passed to forward or generate."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError(
                "`adapter_names` routes a mixed batch at inference; call `model.eval()` first (train each adapter "
                "with `set_adapter`)."
            )
        routing = Routing.from_names(adapter_names, self.peft_config.keys())
        layers = list(self.tuner_layers())
        for layer in layers:
            layer._routing = routing
        try:
            yield
        finally:
            for layer in layers:
                layer._routing = None
