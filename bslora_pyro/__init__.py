"""Bayesian sparse LoRA in Pyro: rank-gated LoRA with a gate prior, exact ELBO and SVI."""

from bslora_pyro.adapter import AdapterConfig, GatedLoraLinear
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.models import (
    GateGuide,
    GatePrior,
    GuideConfig,
    available_guides,
    available_priors,
    get_guide,
    get_prior,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "BayesianLora",
    "GateGuide",
    "GatePrior",
    "GatedLoraLinear",
    "GuideConfig",
    "available_guides",
    "available_priors",
    "get_guide",
    "get_prior",
]
