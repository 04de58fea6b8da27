"""Fine-tuning methods selected by the config key ``method:``, one file each.

Every method module defines a ``build(backbone, scorer, adapter, options) -> method``
function and ``NAME``. A method object provides, like :class:`BayesianLora`:
``training_loss(batch, index, num_data, num_draws, per_example, elbo=None)``,
``param_groups(lr_factors, lr_gates, weight_decay)``, ``training_metrics()``,
``set_progress(fraction)``, ``predict_logits(batch, num_samples, deterministic)`` and
``save(directory)``; the module provides ``load(directory, backbone, scorer)``.

Optional hooks the runner calls: ``fit(examples, encode, train_config, progress, on_step)``
for methods that train several members or on part of the data (deep ensemble, temperature
scaling), and ``fit_posthoc(examples, encode)`` after training (Laplace, temperature
scaling). Methods that need no gradient training set ``trainable = False``.
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


def build_method(name: str, backbone, scorer, adapter, options: dict | None = None):
    """Build method ``name`` on a backbone; ``options`` are its config section."""
    return method_module(name).build(backbone, scorer, adapter, dict(options or {}))
