"""MAP: plain LoRA with AdamW weight decay (the paper's baseline uses 1e-5).

The same class as MLE; the method's weight decay replaces the training config's in
``param_groups``. Decoupled weight decay is the usual stand-in for a Gaussian prior on the
factors (it is not an exact L2 penalty under Adam).
"""

from __future__ import annotations

from pathlib import Path

from bslora_pyro.methods import MethodError
from bslora_pyro.methods.mle import PlainLora, load_method, take_options

NAME = "map"
DEFAULTS = {"weight_decay": 1e-5, "factor_prior_std": None}


def build(backbone, scorer, adapter, options: dict) -> PlainLora:
    """Options: ``weight_decay`` (default 1e-5), ``factor_prior_std`` (an exact Gaussian
    prior on the factors in the loss; default none)."""
    options = take_options(NAME, options, DEFAULTS)
    decay = float(options["weight_decay"])
    if decay < 0:
        raise MethodError(f"map.weight_decay must be >= 0, got {decay}")
    try:
        method = PlainLora(backbone, scorer, adapter, weight_decay=decay, name=NAME,
                           factor_prior_std=options["factor_prior_std"])
    except ValueError as error:
        raise MethodError(str(error)) from None
    method.options = {"weight_decay": decay, "factor_prior_std": method.factor_prior_std}
    return method


def load(directory: str | Path, backbone, scorer) -> PlainLora:
    return load_method(NAME, build, directory, backbone, scorer)
