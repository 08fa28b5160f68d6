"""Setuptools entry point; the metadata is in setup.cfg. It adds one thing setup.cfg cannot say: the start-up hook
``peft_bottleneck_autoload.pth`` goes to the root of site-packages, in wheels and in editable installs alike."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "peft_bottleneck_autoload.pth"
HOOK_SOURCE = Path(__file__).parent / HOOK


class build_py_with_hook(build_py):
    """Wheels: the hook is one more file at the root of the built library."""

    def run(self):
        super().run()
        self.copy_file(str(HOOK_SOURCE), str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


class editable_wheel_with_hook(editable_wheel):
    """Editable installs: setuptools writes only its own .pth into the wheel; write ours beside it."""

    def _select_strategy(self, name, tag, build_lib):
        strategy = super()._select_strategy(name, tag, build_lib)

        class WithHook:
            def __enter__(self):
                strategy.__enter__()
                return self

            def __exit__(self, *exc):
                return strategy.__exit__(*exc)

            def __call__(self, wheel, files, mapping):
                strategy(wheel, files, mapping)
                wheel.writestr(HOOK, HOOK_SOURCE.read_bytes())

        return WithHook()


setup(cmdclass={"build_py": build_py_with_hook, "editable_wheel": editable_wheel_with_hook})
