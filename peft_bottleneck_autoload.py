"""Registers peft-bottleneck's tuner types the moment `peft` is imported, in any process.

Installed with the package as ``peft_bottleneck_autoload.pth``, which Python's ``site`` runs at start-up: it only
puts a one-shot finder on ``sys.meta_path`` (no other import), so a process that never imports ``peft`` pays nothing
measurable. When ``peft`` is imported, the finder lets it load as usual and then imports ``peft_bottleneck``, so
``PeftModel.from_pretrained``, ``AutoPeftModelFor*`` and transformers' ``load_adapter`` know our adapters without an
``import peft_bottleneck``. Set ``PEFT_BOTTLENECK_AUTOLOAD=0`` to turn it off.
"""

import os
import sys


class _RegisterAfterPeft:
    """A meta-path finder that answers for `peft` once: it wraps peft's own loader to import us after it."""

    def find_spec(self, name, path=None, target=None):
        if name != "peft":
            return None
        sys.meta_path.remove(self)  # one shot, and no recursion below
        import importlib.util

        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load_peft = spec.loader.exec_module

        def exec_module(module):
            load_peft(module)
            try:
                import peft_bottleneck  # noqa: F401  (registers the tuner types with PEFT)
            except Exception as error:  # never break `import peft` itself
                import warnings

                warnings.warn(f"peft-bottleneck could not register its adapter types ({error!r}); "
                              "`import peft_bottleneck` to see why.", RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if os.environ.get("PEFT_BOTTLENECK_AUTOLOAD", "1") == "0" or "peft" in sys.modules:
        return
    if not any(isinstance(f, _RegisterAfterPeft) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeft())


install()
