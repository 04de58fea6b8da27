"""A Gaussian prior on the LoRA factors, for point estimates that are MAP under it."""

from __future__ import annotations

import pyro
import torch

from bslora_pyro.adapter.gated_lora import GatedLoraLinear

#: the Pyro site of the factors' log prior (a ``pyro.factor``: counted in the loss, not NLL)
FACTOR_PRIOR_SITE = "factor_prior"


def gaussian_factor_log_prior(adapters: dict[str, GatedLoraLinear], std: float) -> torch.Tensor:
    """``sum log N(theta; 0, std^2)`` over every ``lora_A`` and ``lora_B``, up to the
    constant: ``-||theta||^2 / (2 std^2)``. Both factors are included because the update
    ``B A`` is unchanged by scaling B up and A down, so a prior on one alone is evaded."""
    squares = sum((layer.lora_A.square().sum() + layer.lora_B.square().sum())
                  for layer in adapters.values())
    return -0.5 * squares / std**2


def observe_factor_prior(adapters: dict[str, GatedLoraLinear], std: float | None) -> None:
    """Add the factors' Gaussian log prior to the Pyro model (nothing when ``std`` is None)."""
    if std is not None:
        pyro.factor(FACTOR_PRIOR_SITE, gaussian_factor_log_prior(adapters, std))


def check_factor_prior_std(value, owner: str) -> float | None:
    """``None`` or a positive float; anything else is a one-line error naming ``owner``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}.factor_prior_std must be a positive number, got {value!r}")
    return float(value)
