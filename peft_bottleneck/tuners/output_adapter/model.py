from __future__ import annotations

from ...target_modules import output_embeddings_name
from ..base.model import AdapterTuner
from .config import OUTPUT_EMBEDDINGS
from .layer import OutputAdapterLayer


class OutputAdapterModel(AdapterTuner):
    """Adds a parallel adapter to the LM head found by ``get_output_embeddings()``."""

    prefix: str = "output_adapter_"
    tuner_layer_cls = OutputAdapterLayer

    def _prepare_adapter_config(self, peft_config, model_config):
        # a placeholder rather than the head's name: PEFT saves the whole vocabulary matrix when target_modules
        # names an embedding layer such as "lm_head"
        peft_config.target_modules = {OUTPUT_EMBEDDINGS}
        output_embeddings_name(self.model)  # fail early, with a clear message, on a model without a head
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str) -> bool:
        return key == output_embeddings_name(self.model)
