"""Fine-tuning methods selected by the config key ``method:``, one file each.

Every method module defines ``NAME``, ``OPTIONS`` (the dataclass of its ``method_options``,
built by :func:`~bslora_pyro.methods.base.take_options`), ``build(backbone, scorer, adapter,
options) -> method`` and ``load(directory, backbone, scorer) -> method``. The method object
is a :class:`~bslora_pyro.methods.base.Method`: what it must provide and the optional
hooks the runner calls (``fit``, ``fit_posthoc``, ``save``, the gate log) are listed there.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


class MethodError(ValueError):
    """An unknown method or an option it does not take."""


def _modules() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if name:
            found[name] = module
    return found


def available_methods() -> list[str]:
    return sorted(_modules())


def method_module(name: str) -> ModuleType:
    modules = _modules()
    if name not in modules:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(modules))}")
    return modules[name]


def check_options(name: str, options: dict | None, adapter=None) -> None:
    """Refuse ``options`` that method ``name`` would refuse when built: an unknown or
    mistyped option, or a bad value (one-line :class:`MethodError`); the prior's and
    guide's own options are checked when the model is built."""
    from bslora_pyro.methods.base import take_options

    take_options(name, dict(options or {}), method_module(name).OPTIONS, adapter)


def build_method(name: str, backbone, scorer, adapter, options: dict | None = None):
    """Build method ``name`` on a backbone; ``options`` are its config section."""
    return method_module(name).build(backbone, scorer, adapter, dict(options or {}))
