"""Variational guides over a prior's sites, one file each; found by name at import.

Adding a guide means adding one file to this folder that defines a
:class:`~bslora_pyro.models.guides.base.GateGuide` subclass with a new ``name``. A guide is
chosen by a spec: a name (``"mean_field"``), a mapping ``{"name": ..., **options}``
(``method_options.guide`` in a config; without ``name`` it is the mean-field guide), or a
:class:`GuideConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bslora_pyro.models.base import GatePrior, PriorConfigError, check_hyperparameters
from bslora_pyro.models.guides.base import GateGuide
from bslora_pyro.models.registry import discover

DEFAULT_GUIDE = "mean_field"


@dataclass
class GuideConfig:
    """Options of the default (mean-field) guide, as a typed spec; other guides take a
    mapping ``{"name": ..., **options}``."""

    temperature: float = 0.5
    temperature_final: float | None = None
    straight_through: bool = False
    pi_family: str = "beta"

    def to_dict(self) -> dict:
        return asdict(self)


def _discover() -> dict[str, type[GateGuide]]:
    return discover(__name__, __path__, GateGuide, {"base"}, "guide")


def available_guides() -> list[str]:
    """Names of every guide defined in this folder (and any subclass imported since)."""
    return sorted(_discover())


def get_guide(name: str) -> type[GateGuide]:
    guides = _discover()
    if name not in guides:
        raise PriorConfigError(f"unknown guide {name!r}; available: {', '.join(sorted(guides))}")
    return guides[name]


def guide_spec(spec: Any) -> tuple[type[GateGuide], dict]:
    """``(guide class, options)`` of a spec (name, mapping, GuideConfig, class or None)."""
    if spec is None:
        return get_guide(DEFAULT_GUIDE), {}
    if isinstance(spec, GuideConfig):
        return get_guide(DEFAULT_GUIDE), spec.to_dict()
    if isinstance(spec, str):
        return get_guide(spec), {}
    if isinstance(spec, type) and issubclass(spec, GateGuide):
        return spec, {}
    if isinstance(spec, dict):
        options = dict(spec)
        return get_guide(options.pop("name", DEFAULT_GUIDE)), options
    raise PriorConfigError(f"a guide is a name, a mapping or a GuideConfig, got {spec!r}")


def check_guide_options(cls: type[GateGuide], options: dict, where: str = "guide") -> dict:
    """The options of guide ``cls`` checked against the types and ranges declared on its
    ``__init__`` (and its bases'): an unknown option or a bad value is a one-line error."""
    return check_hyperparameters(cls, options, where, f"guide {cls.name!r}",
                                 ("prior", "feature_size"))


def build_guide(spec: Any, prior: GatePrior, feature_size: int | None = None) -> GateGuide:
    """The guide of ``spec`` over ``prior``'s sites; an unknown option or a value out of
    its range is a one-line error."""
    cls, options = guide_spec(spec)
    return cls(prior, feature_size=feature_size, **check_guide_options(cls, options))


__all__ = ["GateGuide", "GuideConfig", "available_guides", "build_guide",
           "check_guide_options", "get_guide", "guide_spec"]
