"""Bayesian sparse LoRA (the paper's method): gated LoRA with a gate prior and guide.

Saved with :func:`~bslora_pyro.persistence.save_posterior` (``posterior.safetensors``
+ ``posterior.json``) and loaded back through the same format.
"""

from __future__ import annotations

from pathlib import Path

from bslora_pyro.bayesian_lora import BayesianLora, load_posterior
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.mle import take_options
from bslora_pyro.models import PriorConfigError
from bslora_pyro.persistence import save_posterior

NAME = "bslora"
DEFAULTS = {"prior": "bernoulli", "prior_kwargs": None, "guide": {}, "factor_prior_std": None}


class BayesianSparseLora(BayesianLora):
    """:class:`BayesianLora` with the registry's ``name`` and ``save``."""

    name = NAME
    trainable = True

    def save(self, directory: str | Path) -> Path:
        return save_posterior(self, directory, extra={"method": NAME})


def build(backbone, scorer, adapter, options: dict) -> BayesianSparseLora:
    """Options: ``prior`` (name), ``prior_kwargs`` (dict), ``guide`` (a guide name or
    ``{name: ..., **options}``; without a name the mean-field guide with those options),
    ``factor_prior_std`` (a Gaussian prior on the factors; default none)."""
    options = take_options(NAME, options, DEFAULTS)
    try:
        return _build(backbone, scorer, adapter, options)
    except PriorConfigError as error:  # a prior or guide option: name the config section
        raise MethodError(f"method_options of {NAME}: {error}") from None


def _build(backbone, scorer, adapter, options: dict) -> BayesianSparseLora:
    return BayesianSparseLora(
        backbone,
        scorer,
        adapter,
        prior=options["prior"],
        prior_kwargs=options["prior_kwargs"],
        guide=options["guide"] or {},
        factor_prior_std=options["factor_prior_std"],
    )


def load(directory: str | Path, backbone, scorer) -> BayesianSparseLora:
    """Rebuild from a saved posterior (the format of ``load_posterior``) on ``backbone``."""
    return load_posterior(directory, backbone, scorer, cls=BayesianSparseLora)
