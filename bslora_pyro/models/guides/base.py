"""The interface of variational guides over a prior's sites.

A guide file in this folder defines one :class:`GateGuide` subclass with a unique ``name``.
A guide owns every variational parameter and the Concrete temperature schedule. The base
class gives each of the prior's [0, 1] latents (:class:`~bslora_pyro.models.base.
LatentSite`) a mean-field ``Beta`` (closed-form KL) or ``Kumaraswamy`` (Monte Carlo KL) q
started at its prior; a subclass only says how one module's gates are distributed
(:meth:`GateGuide.gate_distribution`). A guide with ``local = True`` is amortized: its
gates are per example, ``q(z | x)``, drawn inside the data plate from ``features`` of the
batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from bslora_pyro.models.base import GatePrior, LatentSite, PriorConfigError
from bslora_pyro.models.gates import GateDistribution
from bslora_pyro.typed import PositiveFloat


def param_key(name: str) -> str:
    """A site or module path as a parameter name (no dots)."""
    return name.replace(".", "-")


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 20, x, torch.log(torch.expm1(x.clamp(max=20))))


class GateGuide(nn.Module, ABC):
    """q over a prior's sites: mean-field q of its latents times per-module gate q's.

    Options are checked by name against the types and ranges declared on ``__init__``
    (:func:`~bslora_pyro.models.guides.check_guide_options`) before a guide is built.

    Args:
        prior: the prior whose sites this guide covers.
        temperature: Concrete temperature tau at the start of training.
        temperature_final: if set, tau is annealed linearly to it over training.
        pi_family: ``beta`` or ``kumaraswamy`` for the prior's [0, 1] latents.
        feature_size: width of the batch features an amortized guide reads.
    """

    name: ClassVar[str] = ""
    local: ClassVar[bool] = False

    def __init__(
        self,
        prior: GatePrior,
        temperature: PositiveFloat = 0.5,
        temperature_final: PositiveFloat | None = None,
        pi_family: str = "beta",
        feature_size: int | None = None,
    ) -> None:
        super().__init__()
        if pi_family not in ("beta", "kumaraswamy"):
            raise PriorConfigError(f"guide.pi_family must be 'beta' or 'kumaraswamy', "
                                   f"got {pi_family!r}")
        self.module_ranks = dict(prior.module_ranks)
        object.__setattr__(self, "_prior", prior)  # read, not owned: not a submodule
        self.latents = prior.latent_sites()
        self.start_temperature = float(temperature)
        self.temperature_final = None if temperature_final is None else float(temperature_final)
        self.temperature = self.start_temperature
        self.pi_family = pi_family
        self.feature_size = feature_size
        for site in self.latents:
            self._latent_params(site)

    # --- the temperature schedule (the guide is its only owner) --------------------------
    def set_progress(self, fraction: float) -> None:
        """Anneal tau linearly from ``temperature`` to ``temperature_final`` over training."""
        if self.temperature_final is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            start, end = self.start_temperature, self.temperature_final
            self.temperature = start + (end - start) * fraction

    @property
    def final_temperature(self) -> float:
        return self.temperature_final or self.start_temperature

    # --- latents -----------------------------------------------------------------------
    def _latent_params(self, site: LatentSite) -> None:
        key = param_key(site.group)
        a, b = inverse_softplus(site.a.float()), inverse_softplus(site.b.float())
        self.register_parameter(f"{site.suffix}_a__{key}", nn.Parameter(a))
        self.register_parameter(f"{site.suffix}_b__{key}", nn.Parameter(b))

    def latent_distribution(self, site: LatentSite) -> dist.TorchDistribution:
        key = param_key(site.group)
        a = F.softplus(getattr(self, f"{site.suffix}_a__{key}"))
        b = F.softplus(getattr(self, f"{site.suffix}_b__{key}"))
        return dist.Kumaraswamy(a, b) if self.pi_family == "kumaraswamy" else dist.Beta(a, b)

    # --- gates -------------------------------------------------------------------------
    @abstractmethod
    def gate_distribution(
        self, module: str, features: torch.Tensor | None = None, hard: bool = False
    ) -> GateDistribution:
        """q of one module's gates (event shape ``[r]``; batch ``[B]`` for local guides)."""

    def inclusion_probs(self, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """q(z_j = 1) per module (``[B, r]`` given features, for local guides)."""
        with torch.no_grad():
            return {m: self.gate_distribution(m, features).inclusion_probs().detach()
                    for m in self.module_ranks}

    # --- the Pyro program --------------------------------------------------------------
    def forward(self, gate_plate, features: torch.Tensor | None = None, hard: bool = False,
                temperature: float | None = None) -> dict[str, torch.Tensor]:
        """Sample the latents' q (global), then every module's gates inside ``gate_plate``;
        ``hard`` draws exact 0/1 gates (prediction); ``temperature`` overrides tau."""
        if temperature is not None:
            saved, self.temperature = self.temperature, temperature
            try:
                return self.forward(gate_plate, features, hard)
            finally:
                self.temperature = saved
        for site in self.latents:
            pyro.sample(site.name, self.latent_distribution(site).to_event(site.a.dim()))
        gates = {}
        with gate_plate:
            for module in self.module_ranks:
                expected_kl = partial(self._prior.expected_gate_kl, module)
                gates[module] = pyro.sample(module, self.gate_distribution(module, features, hard),
                                            infer={"expected_kl": expected_kl})
        return gates

    def options(self) -> dict:
        """The keyword arguments that rebuild this guide (saved with a posterior)."""
        return {"temperature": self.start_temperature,
                "temperature_final": self.temperature_final, "pi_family": self.pi_family}


class LogitGateGuide(GateGuide):
    """A guide with one learned logit per rank and module (``gate_logits``), started at
    the prior's inclusion probabilities."""

    def __init__(self, prior: GatePrior, **options) -> None:
        super().__init__(prior, **options)
        self.gate_logits = nn.ParameterDict({
            param_key(m): nn.Parameter(torch.logit(p.float()))
            for m, p in prior.prior_inclusion_probs().items()
        })

    def logits_of(self, module: str) -> nn.Parameter:
        return self.gate_logits[param_key(module)]
