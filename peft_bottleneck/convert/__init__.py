"""Converters from other adapter libraries' checkpoints: AdapterHub's ``adapters`` (``from_adapterhub``).

LLM-Adapters' bottleneck checkpoints need no converter: they load with ``PeftModel.from_pretrained`` as they are.
"""

from .adapterhub import ConversionError, ConversionReport, convert, from_adapterhub

__all__ = ["ConversionError", "ConversionReport", "convert", "from_adapterhub"]
