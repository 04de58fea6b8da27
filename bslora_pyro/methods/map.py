"""MAP: plain LoRA with AdamW weight decay (the paper's baseline uses 1e-5).

The same class as MLE; the method's weight decay replaces the training config's in
``param_groups``. Decoupled weight decay is the usual stand-in for a Gaussian prior on the
factors (it is not an exact L2 penalty under Adam).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import NonNegativeFloat, PositiveFloat

NAME = "map"


@dataclass
class MapOptions(MethodOptions):
    """``weight_decay`` (default 1e-5), ``factor_prior_std`` (an exact Gaussian prior on
    the factors in the loss; default none)."""

    weight_decay: NonNegativeFloat = 1e-5
    factor_prior_std: PositiveFloat | None = None


OPTIONS = MapOptions


def build(backbone, scorer, adapter, options: dict) -> PlainLora:
    """Options: see :class:`MapOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    try:
        method = PlainLora(backbone, scorer, adapter, weight_decay=opts.weight_decay, name=NAME,
                           factor_prior_std=opts.factor_prior_std)
    except ValueError as error:
        raise MethodError(str(error)) from None
    method.options = {"weight_decay": opts.weight_decay,
                      "factor_prior_std": method.factor_prior_std}
    return method


def load(directory: str | Path, backbone, scorer) -> PlainLora:
    return load_method(NAME, build, directory, backbone, scorer)
