"""Plain LoRA trained by maximum likelihood (MLE); with weight decay it is the MAP baseline.

Implemented as the gated model with every gate fixed at 1 and no latent variables
(:class:`~bslora_pyro.methods.base.PlainLora`), so it shares layers, scoring and the
training loop with the Bayesian method. It takes no options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options

NAME = "mle"


@dataclass
class MleOptions(MethodOptions):
    """MLE takes no options."""


OPTIONS = MleOptions


def build(backbone, scorer, adapter, options: dict) -> PlainLora:
    take_options(NAME, options, OPTIONS, adapter)
    return PlainLora(backbone, scorer, adapter)


def load(directory: str | Path, backbone, scorer) -> PlainLora:
    return load_method(NAME, build, directory, backbone, scorer)
