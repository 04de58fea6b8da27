"""Rank-gate priors, one file each, and their guides (``models/guides/``, one file each);
both are found by name at import.

Adding a prior means adding one file to this folder that defines a
:class:`~bslora_pyro.models.base.GatePrior` subclass with a new ``name``; adding a guide,
one file to ``guides/`` with a :class:`~bslora_pyro.models.guides.base.GateGuide` subclass.
"""

from __future__ import annotations

from bslora_pyro.models.base import GatePrior, LatentSite, PriorConfigError, check_prior_kwargs
from bslora_pyro.models.gates import ConcreteGate, GateDistribution
from bslora_pyro.models.guides import (
    GateGuide,
    GuideConfig,
    available_guides,
    build_guide,
    check_guide_options,
    get_guide,
    guide_spec,
)
from bslora_pyro.models.registry import discover

_NOT_PRIORS = {"base", "gates", "guides", "registry"}


def _discover() -> dict[str, type[GatePrior]]:
    return discover(__name__, __path__, GatePrior, _NOT_PRIORS, "prior")


def available_priors() -> list[str]:
    """Names of every prior defined in this folder (and any subclass imported since)."""
    return sorted(_discover())


def get_prior(name: str) -> type[GatePrior]:
    """The prior class registered under ``name``."""
    priors = _discover()
    if name not in priors:
        raise PriorConfigError(f"unknown prior {name!r}; available: {', '.join(sorted(priors))}")
    return priors[name]


__all__ = [
    "ConcreteGate",
    "GateDistribution",
    "GateGuide",
    "GatePrior",
    "GuideConfig",
    "LatentSite",
    "PriorConfigError",
    "available_guides",
    "available_priors",
    "build_guide",
    "check_guide_options",
    "check_prior_kwargs",
    "get_guide",
    "get_prior",
    "guide_spec",
]
