"""Typed records from YAML-like mappings: every key, value type and range checked, one-line
errors.

The experiment config (:mod:`bslora_pyro.experiment.config`), the methods' options
(:mod:`bslora_pyro.methods.base`) and the priors' and guides' keyword arguments are checked
here, so all name the key at fault and offer the closest known key for a misspelt one.

A numeric range is declared once, next to the type: ``Annotated[float, Range(gt=0)]`` (or
one of the aliases below, e.g. ``PositiveFloat``) on a dataclass field or an ``__init__``
parameter; :func:`check_type` checks it wherever a value is read (config files, ``--set``,
command-line flags) and :func:`check_ranges` when a record is built directly in Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from typing import Annotated, Any

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


class RangeError(ConfigError):
    """A value of the right type outside its declared range."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number: ``gt`` / ``ge`` below, ``lt`` / ``le`` above (``None``: open).
    NaN is never inside a range."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def describe(self, integer: bool = False) -> str:
        """The range in words: ``a positive integer``, ``in [0, 1)``, ``a number >= 2``."""
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None \
            else None
        high = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None \
            else None
        kind = "an integer" if integer else "a number"
        if low and high:
            interval = f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
            return f"an integer {interval}" if integer else interval
        if low:
            if low == ("(", 0) or (integer and low == ("[", 1)):
                return "a positive integer" if integer else "a positive number"
            if low == ("[", 0):
                return f"a non-negative {'integer' if integer else 'number'}"
            return f"{kind} {'>' if low[0] == '(' else '>='} {_number(low[1])}"
        if high:
            return f"{kind} {'<' if high[0] == ')' else '<='} {_number(high[1])}"
        return kind

    def check(self, value: Any, where: str, integer: bool = False, shown: Any = None) -> None:
        if value is not None and not self.contains(value):
            shown = value if shown is None else shown
            raise RangeError(f"{where} must be {self.describe(integer)}, got {shown!r}")


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


#: the ranges most keys use (``PositiveInt | None`` allows null as well)
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
OpenUnitFloat = Annotated[float, Range(gt=0, lt=1)]  # (0, 1): a probability, a share
UnitFloat = Annotated[float, Range(ge=0, lt=1)]  # [0, 1): a share that may be zero
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # what every random generator accepts


def ranges_of(annotation: Any) -> tuple[Any, list[Range]]:
    """``(type, ranges)`` of an annotation: ``Annotated[T, Range(...)]`` gives ``T`` and its
    ranges, and so does ``Annotated[T, ...] | None``; anything else has none."""
    if typing.get_origin(annotation) is Annotated:
        inner, *extras = typing.get_args(annotation)
        return inner, [extra for extra in extras if isinstance(extra, Range)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            inner, ranges = ranges_of(option)
            if ranges:
                return inner, ranges
    return annotation, []


def close_match(name: str, known: typing.Iterable[str]) -> str | None:
    """The known name closest to a misspelt ``name`` (``None`` when none is close)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        checked = check_type(value, args[0], where)
        for extra in args[1:]:
            if isinstance(extra, Range):
                extra.check(checked, where, integer=args[0] is int, shown=value)
        return checked
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check_type(value, option, where)
            except RangeError:  # the right type, out of range: that is the message
                raise
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
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.copysign(math.inf, value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise RangeError(f"{where} must be a finite number, got {value!r}")
    if annotation in (int, float, str, bool):
        if isinstance(value, bool) != (annotation is bool) or not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    return value


def _name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is Annotated:
        return _name(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_name(option) for option in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def field_types(cls: type) -> dict[str, Any]:
    """The annotations of a dataclass's fields, with their declared ranges."""
    return typing.get_type_hints(cls, include_extras=True)


def check_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked against field ``name`` of dataclass ``cls`` (type and range), as
    when a config is read; ``where`` names it in the message (e.g. a command-line flag)."""
    return check_type(value, field_types(cls)[name], where)


def check_ranges(record: Any, where: str, error: type[ValueError] = RangeError) -> None:
    """Check every field of a dataclass ``record`` against its declared range (for records
    built directly in Python; :func:`build_dataclass` has checked them already)."""
    prefix = f"{where}." if where else ""
    for name, annotation in field_types(type(record)).items():
        inner, ranges = ranges_of(annotation)
        value = getattr(record, name, None)
        if not ranges or value is None or isinstance(value, bool) \
                or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{prefix}{name} must be a finite number, got {value!r}")
        for bound in ranges:
            if not bound.contains(value) or (inner is int and not isinstance(value, int)):
                raise error(f"{prefix}{name} must be {bound.describe(inner is int)}, "
                            f"got {value!r}")


def init_parameters(cls: type, skip: typing.Iterable[str] = ()) -> dict[str, Any]:
    """The keyword parameters of ``cls(...)`` with their annotations: those of its
    ``__init__`` and, while an ``__init__`` passes ``**kwargs`` on, of its bases'."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init, include_extras=True)
        forwards = False
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                found.setdefault(parameter.name, hints.get(parameter.name, Any))
        if not forwards:
            break
    return {name: hint for name, hint in found.items() if name not in set(skip)}


def check_arguments(cls: type, kwargs: dict, where: str, owner: str,
                    skip: typing.Iterable[str] = ()) -> dict:
    """``kwargs`` for ``cls(...)`` checked against its ``__init__`` annotations (types and
    ranges; see :func:`init_parameters`): an unknown keyword (with the closest known one)
    or a bad value is a one-line :class:`ConfigError` naming ``where.<key>``; ``owner``
    names ``cls`` in the message (``prior 'bernoulli'``). Returns the checked values."""
    known = init_parameters(cls, skip)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        close = close_match(unknown[0], known)
        hint = f"did you mean {close}?" if close else f"it takes: {', '.join(known) or 'none'}"
        raise ConfigError(f"{where}: {owner} has no option {unknown[0]!r} ({hint})")
    return {key: check_type(value, known[key], f"{where}.{key}") for key, value in kwargs.items()}


def build_dataclass(cls: type, data: Any, where: str = "config"):
    """Build ``cls`` from a mapping, checking every key and value type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = field_types(cls)
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
