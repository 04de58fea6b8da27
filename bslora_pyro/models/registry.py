"""Find the classes defined by the modules of a package: priors and guides by name."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from bslora_pyro.models.base import PriorConfigError


def discover(package: str, paths: Iterable[str], base: type, skip: set[str], kind: str) -> dict:
    """Import every module of ``package`` (but ``skip``) and map each named subclass of
    ``base`` (also any imported since) to its class; two classes with one name are an error."""
    for info in pkgutil.iter_modules(list(paths)):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")
    found: dict[str, type] = {}
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.name:
            if cls.name in found and found[cls.name] is not cls:
                raise PriorConfigError(f"two {kind}s are named {cls.name!r}")
            found[cls.name] = cls
    return found
