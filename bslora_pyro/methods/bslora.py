"""Bayesian sparse LoRA (the paper's method): gated LoRA with a gate prior and guide.

Saved with :func:`~bslora_pyro.persistence.save_posterior` (``posterior.safetensors``
+ ``posterior.json``) and loaded back through the same format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bslora_pyro.bayesian_lora import BayesianLora, load_posterior
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import Method, MethodOptions, take_options
from bslora_pyro.models import PriorConfigError
from bslora_pyro.persistence import save_posterior

NAME = "bslora"


@dataclass
class BsloraOptions(MethodOptions):
    """``prior`` (name), ``prior_kwargs`` (its hyperparameters), ``guide`` (a guide name or
    ``{name: ..., **options}``; without a name the mean-field guide with those options),
    ``factor_prior_std`` (a Gaussian prior on the factors; default none). The prior's and
    guide's own options are checked when the model is built."""

    prior: Any = "bernoulli"
    prior_kwargs: dict[str, Any] | None = None
    guide: Any = field(default_factory=dict)
    factor_prior_std: Any = None


OPTIONS = BsloraOptions


class BayesianSparseLora(BayesianLora, Method):
    """:class:`BayesianLora` as a registry method: ``name``, ``save`` and the gate hooks."""

    name = NAME
    trainable = True

    def save(self, directory: str | Path) -> Path:
        return save_posterior(self, directory, extra={"method": NAME})

    def gate_probabilities(self) -> dict[str, torch.Tensor]:
        return self.inclusion_probs()

    def active_ranks(self) -> float:
        return self.expected_active_ranks()


def build(backbone, scorer, adapter, options: dict) -> BayesianSparseLora:
    """Options: see :class:`BsloraOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    try:
        return _build(backbone, scorer, adapter, opts)
    except PriorConfigError as error:  # a prior or guide option: name the config section
        raise MethodError(f"method_options of {NAME}: {error}") from None


def _build(backbone, scorer, adapter, opts: BsloraOptions) -> BayesianSparseLora:
    return BayesianSparseLora(
        backbone,
        scorer,
        adapter,
        prior=opts.prior,
        prior_kwargs=opts.prior_kwargs,
        guide=opts.guide or {},
        factor_prior_std=opts.factor_prior_std,
    )


def load(directory: str | Path, backbone, scorer) -> BayesianSparseLora:
    """Rebuild from a saved posterior (the format of ``load_posterior``) on ``backbone``."""
    return load_posterior(directory, backbone, scorer, cls=BayesianSparseLora)
