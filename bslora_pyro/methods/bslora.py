"""Bayesian sparse LoRA (the paper's method): gated LoRA with a gate prior and guide."""

from __future__ import annotations

from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.models import GuideConfig

NAME = "bslora"


def build(backbone, scorer, adapter, options: dict) -> BayesianLora:
    """Options: ``prior`` (name), ``prior_kwargs`` (dict), ``guide`` (GuideConfig fields)."""
    return BayesianLora(
        backbone,
        scorer,
        adapter,
        prior=options.pop("prior", "bernoulli"),
        prior_kwargs=options.pop("prior_kwargs", None),
        guide=GuideConfig(**options.pop("guide", {})),
    )
