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
from bslora_pyro.models import (
    PriorConfigError,
    check_guide_options,
    check_prior_kwargs,
    get_prior,
    guide_spec,
)
from bslora_pyro.persistence import save_posterior
from bslora_pyro.typed import PositiveFloat

NAME = "bslora"


@dataclass
class BsloraOptions(MethodOptions):
    """``prior`` (name), ``prior_kwargs`` (its hyperparameters), ``guide`` (a guide name or
    ``{name: ..., **options}``; without a name the mean-field guide with those options),
    ``factor_prior_std`` (a Gaussian prior on the factors; default none). The prior's and
    guide's own options are checked here too, against the types and ranges declared on
    their ``__init__``."""

    prior: str = "bernoulli"
    prior_kwargs: dict[str, Any] | None = None
    guide: str | dict[str, Any] = field(default_factory=dict)
    factor_prior_std: PositiveFloat | None = None

    def check(self, adapter) -> None:
        for key, check_part in (("prior", self._check_prior), ("guide", self._check_guide)):
            try:
                check_part()
            except PriorConfigError as error:
                message = str(error)
                if not message.startswith(f"method_options.{key}"):
                    message = f"method_options.{key}: {message}"
                raise MethodError(f"method {NAME!r}: {message}") from None

    def _check_prior(self) -> None:
        check_prior_kwargs(get_prior(self.prior), self.prior_kwargs,
                           "method_options.prior_kwargs")

    def _check_guide(self) -> None:
        cls, options = guide_spec(self.guide or {})
        check_guide_options(cls, options, "method_options.guide")


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
