"""AdapterHub's bottleneck presets by name: ``get_config("seq_bn", reduction_factor=8, task_type="SEQ_CLS")``.

The table holds each preset's settings as AdapterHub 1.3 defines them (its ``ADAPTER_CONFIG_MAP``, the deprecated
names included); the converter's ``config_arguments`` turns them into our config, the same mapping that converts a
saved AdapterHub adapter, so a preset and a converted checkpoint of it compute the same thing.
"""

from __future__ import annotations

from .convert.adapterhub import ConversionError, config_arguments

# AdapterHub's BnConfig defaults, then each preset's own settings (adapters 1.3.0)
_BN_DEFAULTS = dict(
    mh_adapter=False, output_adapter=True, reduction_factor=16, non_linearity="relu", original_ln_before=False,
    original_ln_after=True, ln_before=False, ln_after=False, init_weights="bert", is_parallel=False, scaling=1.0,
    use_gating=False, residual_before_ln=True, adapter_residual_before_ln=False, inv_adapter=None,
    inv_adapter_reduction_factor=None, cross_adapter=False, leave_out=[], dropout=0.0, phm_layer=False, phm_dim=4,
    factorized_phm_W=True, shared_W_phm=False, shared_phm_rule=True, factorized_phm_rule=False, phm_c_init="normal",
    phm_init_range=0.0001, learn_phm=True, hypercomplex_nonlinearity="glorot-uniform", phm_rank=1, phm_bias=True,
)
_SEQ_BN = dict(original_ln_before=True)
_DOUBLE_SEQ_BN = dict(mh_adapter=True, non_linearity="swish")
_PAR_BN = dict(is_parallel=True, reduction_factor=2, scaling=4.0, init_weights="mam_adapter")
_INV = dict(inv_adapter="nice", inv_adapter_reduction_factor=2)
PRESETS = {
    "seq_bn": _SEQ_BN,
    "double_seq_bn": _DOUBLE_SEQ_BN,
    "par_bn": _PAR_BN,
    "scaled_par_bn": {**_PAR_BN, "scaling": "learned"},
    "seq_bn_inv": {**_SEQ_BN, **_INV},
    "double_seq_bn_inv": {**_DOUBLE_SEQ_BN, **_INV},
    "compacter": dict(phm_layer=True, mh_adapter=True, reduction_factor=32, non_linearity="gelu"),
    "compacter++": dict(phm_layer=True, reduction_factor=32, non_linearity="gelu", original_ln_before=True),
}
DEPRECATED = {"pfeiffer": "seq_bn", "houlsby": "double_seq_bn", "parallel": "par_bn",
              "scaled_parallel": "scaled_par_bn", "pfeiffer+inv": "seq_bn_inv", "houlsby+inv": "double_seq_bn_inv"}
PRESET_NAMES = (*PRESETS, *DEPRECATED)


def preset_settings(name: str) -> dict:
    """AdapterHub's full ``BnConfig`` settings of preset ``name``."""
    if not isinstance(name, str) or name not in PRESET_NAMES:
        raise ValueError(f"Unknown AdapterHub preset {name!r}; known: {list(PRESET_NAMES)}.")
    return {**_BN_DEFAULTS, **PRESETS[DEPRECATED.get(name, name)]}


def get_config(name: str, **overrides):
    """Our config for AdapterHub's preset ``name`` (``seq_bn``, ``double_seq_bn``, ``par_bn``, ``scaled_par_bn``,
    ``seq_bn_inv``, ``double_seq_bn_inv``, ``compacter``, ``compacter++`` and the older ``pfeiffer``, ``houlsby``,
    ``parallel``, ``scaled_parallel``, ``pfeiffer+inv``, ``houlsby+inv``), with AdapterHub's exact settings.
    ``overrides``: AdapterHub field names (``reduction_factor``, ``non_linearity``, ``dropout``, ...) or ours
    (``task_type``, ``target_modules``, ``bottleneck_size``, ...)."""
    return from_adapterhub_settings(preset_settings(name), _label=f"get_config({name!r})", **overrides)


def from_adapterhub_settings(settings: dict, *, _label: str = "AdapterHub settings", **overrides):
    """Our config for AdapterHub ``BnConfig`` fields (``settings``: any subset; the rest are ``BnConfig``'s
    defaults), with ``overrides`` as in ``get_config``."""
    unknown = sorted(set(settings) - set(_BN_DEFAULTS) - {"architecture", "init_weights_seed", "stochastic_depth"})
    if unknown:
        raise ValueError(f"{_label}: not AdapterHub BnConfig fields: {unknown}; known: {sorted(_BN_DEFAULTS)}")
    settings = {**_BN_DEFAULTS, **settings}
    ours = {k: v for k, v in overrides.items() if k not in settings}
    settings.update({k: v for k, v in overrides.items() if k in settings})
    try:
        config_cls, arguments = config_arguments(settings, None)
    except ConversionError as error:
        raise ValueError(f"{_label}: {error}") from None
    if arguments.get("original_ln_before") and arguments.get("placement") == "pfeiffer":
        # AdapterHub's seq_bn reads the block's LayerNorm; left to the placement's preset, it applies wherever the
        # model's residual and LayerNorm are known (everywhere AdapterHub runs) and is off where they are not
        arguments["original_ln_before"] = None
    if settings.get("leave_out"):
        arguments["leave_out"] = list(settings["leave_out"])
    return config_cls(**{**arguments, **ours})


__all__ = ["DEPRECATED", "PRESETS", "PRESET_NAMES", "from_adapterhub_settings", "get_config", "preset_settings"]
