"""The paper's prior: z_j ~ Bernoulli(p0) i.i.d. per rank (no other latents)."""

from __future__ import annotations

import math

import torch

from bslora_pyro.models.base import GatePrior
from bslora_pyro.typed import OpenUnitFloat


class BernoulliPrior(GatePrior):
    """i.i.d. Bernoulli(p0) gates; the gate KL is exact (closed form)."""

    name = "bernoulli"

    def __init__(self, module_ranks: dict[str, int], p0: OpenUnitFloat = 0.5) -> None:
        super().__init__(module_ranks)
        self.p0 = float(p0)

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        return {m: torch.full((r,), self.p0) for m, r in self.module_ranks.items()}

    def gate_probs(self, module: str, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.full((self.module_ranks[module],), self.p0, device=self._device_probe.device)

    def expected_log_probs(self, module, latent_dists):
        r = self.module_ranks[module]
        device = self._device_probe.device
        return (torch.full((r,), math.log(self.p0), device=device),
                torch.full((r,), math.log1p(-self.p0), device=device))

    def hyperparameters(self) -> dict:
        return {"p0": self.p0}
