"""BLoB: a Gaussian posterior on the LoRA factor A, B deterministic, as a Pyro model/guide.

Model: per adapted module m, ``A_m ~ N(0, prior_std^2)`` elementwise (one site, event
``[r, in]``), then the answers. Guide: ``A_m ~ N(mu_m, softplus(rho_m)^2)`` where ``mu_m``
is the layer's ``lora_A`` (Kaiming init) and ``softplus(rho_m)`` starts at ``sigma_init``.
The loss is our :class:`ExactELBO`: the likelihood scaled to the dataset by the ``data``
plate plus the closed-form Normal-Normal KL, no KL weight. Draws use the plain
reparametrisation (no flipout): G draws of A per module (one per draw, or per question
with ``per_example``) are set as ``sampled_A`` ``[G, r, in]`` and run in one batched
forward over draw-major rows. Training uses the trainer's ``num_particles`` (1 = BLoB's
setting); prediction uses M draws, or the mean A when deterministic.

Parameter groups: B and heads (``factors``, with weight decay) and the means of A with
them; the ``rho`` of the standard deviations in a ``variational`` group at the same
learning rate without weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import PositiveFloat

NAME = "blob"


@dataclass
class BlobOptions(MethodOptions):
    """``prior_std`` (default 0.2), ``sigma_init`` (default 0.05), both positive."""

    prior_std: PositiveFloat = 0.2
    sigma_init: PositiveFloat = 0.05


OPTIONS = BlobOptions


class BlobLora(PlainLora):
    stochastic = True

    def __init__(self, backbone, scorer, adapter, prior_std: float, sigma_init: float) -> None:
        super().__init__(backbone, scorer, adapter, name=NAME)
        self.prior_std = prior_std
        rho = math.log(math.expm1(sigma_init))
        self.rho = nn.ParameterList(
            nn.Parameter(torch.full_like(layer.lora_A, rho)) for layer in self.adapters.values()
        )

    def sigmas(self) -> dict[str, torch.Tensor]:
        """Posterior standard deviations of A, by module."""
        return {name: F.softplus(rho) for name, rho in zip(self.adapters, self.rho, strict=True)}

    def set_factors(self, factors: dict[str, torch.Tensor] | None) -> None:
        """Per-draw A on every adapter (``None``: the posterior mean)."""
        for name, layer in self.adapters.items():
            layer.gates = None
            layer.sampled_A = None if factors is None else factors[name]

    @staticmethod
    def _groups(batch_size: int, num_draws: int, per_example: bool) -> int:
        return num_draws * batch_size if per_example else num_draws

    def _plate(self, groups: int):
        return pyro.plate("factor_draws", groups, dim=-1)

    def sample_factors(self) -> dict[str, torch.Tensor]:
        """q(A): one ``pyro.sample`` site per module (call inside the draws plate)."""
        return {
            name: pyro.sample(name, dist.Normal(layer.lora_A, sigma).to_event(2))
            for (name, layer), sigma in zip(
                self.adapters.items(), self.sigmas().values(), strict=True
            )
        }

    # --- Pyro program -------------------------------------------------------------------
    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = self._groups(len(index), num_draws, per_example)
        factors = {}
        with self._plate(groups), poutine.scale(scale=1.0 / groups):
            for name, layer in self.adapters.items():
                zero = torch.zeros((), device=layer.lora_A.device)
                prior = dist.Normal(zero, zero + self.prior_std).expand(layer.lora_A.shape)
                factors[name] = pyro.sample(name, prior.to_event(2))
        self.set_factors(factors)
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        self.observe(batch, index, num_data, logits)
        return logits

    def guide(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = self._groups(len(index), num_draws, per_example)
        with self._plate(groups), poutine.scale(scale=1.0 / groups):
            return self.sample_factors()

    def prepare(self, draws: int, sample: bool) -> None:
        if not sample:
            self.set_factors(None)
            return
        with self._plate(draws):
            self.set_factors({k: v.detach() for k, v in self.sample_factors().items()})

    # --- parameters ---------------------------------------------------------------------
    def param_groups(self, lr_factors, lr_gates, weight_decay=0.0):
        groups = super().param_groups(lr_factors, lr_gates, weight_decay)
        groups.append(
            {"params": list(self.rho), "lr": lr_factors, "weight_decay": 0.0, "name": "variational"}
        )
        return groups

    def training_metrics(self) -> dict[str, float]:
        sigmas = torch.cat([s.detach().flatten() for s in self.sigmas().values()])
        return {"sigma_mean": float(sigmas.mean())}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = super().state_tensors()
        state.update(
            {
                f"variational/{name}.rho": rho
                for name, rho in zip(self.adapters, self.rho, strict=True)
            }
        )
        return state


def build(backbone, scorer, adapter, options: dict) -> BlobLora:
    """Options: see :class:`BlobOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    method = BlobLora(backbone, scorer, adapter, opts.prior_std, opts.sigma_init)
    method.options = {"prior_std": opts.prior_std, "sigma_init": opts.sigma_init}
    return method


def load(directory: str | Path, backbone, scorer) -> BlobLora:
    return load_method(NAME, build, directory, backbone, scorer)
