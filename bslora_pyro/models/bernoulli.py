"""The paper's prior: z_j ~ Bernoulli(p0) i.i.d. per rank; q(z_j) = Bernoulli(sigmoid(phi_j))."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bslora_pyro.models.base import GatePrior, GuideConfig, check_probability


class BernoulliPrior(GatePrior):
    """i.i.d. Bernoulli(p0) gates: r variational parameters per module, nothing else."""

    name = "bernoulli"

    def __init__(
        self,
        module_ranks: dict[str, int],
        guide_config: GuideConfig | None = None,
        p0: float = 0.5,
    ) -> None:
        super().__init__(module_ranks, guide_config)
        self.p0 = check_probability("p0", p0)
        self.init_gate_logits(self.prior_inclusion_probs())

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        return {m: torch.full((r,), self.p0) for m, r in self.module_ranks.items()}

    def model(self) -> dict[str, torch.Tensor]:
        gates = {}
        for module in self.module_ranks:
            probs = torch.full_like(self.logits_of(module), self.p0).detach()
            gates[module] = pyro.sample(module, dist.Bernoulli(probs=probs).to_event(1))
        return gates

    def guide_latents(self, module: str) -> None:
        return None

    def hyperparameters(self) -> dict:
        return {"p0": self.p0}
