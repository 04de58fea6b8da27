"""Typed records from YAML-like mappings: every key and value type checked, one-line errors.

The experiment config (:mod:`bslora_pyro.experiment.config`) and the methods' options
(:mod:`bslora_pyro.methods.base`) are built here, so both name the key at fault and offer
the closest known key for a misspelt one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def close_match(name: str, known: typing.Iterable[str]) -> str | None:
    """The known name closest to a misspelt ``name`` (``None`` when none is close)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check_type(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"{where}: {value!r} is not a valid {_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if isinstance(value, bool) != (annotation is bool) or not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    return value


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def build_dataclass(cls: type, data: Any, where: str = "config"):
    """Build ``cls`` from a mapping, checking every key and value type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = "" if where == "config" else f"{where}."
        close = close_match(unknown[0], fields)
        hint = f" (did you mean {prefix}{close}?)" if close else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}{hint}")
    kwargs = {}
    for key, value in data.items():
        child = key if where == "config" else f"{where}.{key}"
        kwargs[key] = check_type(value, hints[key], child)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None
