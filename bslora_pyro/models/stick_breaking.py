"""The ordered (IBP stick-breaking) beta process.

v_k ~ Beta(alpha0, 1), pi_k = prod_{j<=k} v_j, z_k ~ Bernoulli(pi_k): inclusion
probabilities decrease with the rank index, so the posterior prefers low ranks first and
the effective rank of each module is learned. q(v) is Beta (closed-form KL) or
Kumaraswamy (Monte Carlo KL); q(z) is the shared relaxed Bernoulli.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bslora_pyro.models.base import GatePrior, GuideConfig, check_positive, clamp_probs


class StickBreakingPrior(GatePrior):
    name = "stick_breaking"

    def __init__(
        self,
        module_ranks: dict[str, int],
        guide_config: GuideConfig | None = None,
        alpha0: float = 5.0,
    ) -> None:
        super().__init__(module_ranks, guide_config)
        self.alpha0 = check_positive("alpha0", alpha0)
        for module, r in self.module_ranks.items():
            self.beta_params("v", module, torch.full((r,), self.alpha0), torch.ones(r))
        self.init_gate_logits(self.prior_inclusion_probs())

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        mean_v = self.alpha0 / (self.alpha0 + 1.0)
        return {
            m: mean_v ** torch.arange(1, r + 1, dtype=torch.float32)
            for m, r in self.module_ranks.items()
        }

    def model(self) -> dict[str, torch.Tensor]:
        gates = {}
        for module, r in self.module_ranks.items():
            like = self.logits_of(module).new_ones(r)
            v = pyro.sample(f"{module}/v", dist.Beta(like * self.alpha0, like).to_event(1))
            pi = clamp_probs(torch.cumprod(v, dim=-1))
            gates[module] = pyro.sample(module, dist.Bernoulli(probs=pi).to_event(1))
        return gates

    def guide_latents(self, module: str) -> None:
        pyro.sample(f"{module}/v", self.beta_family("v", module).to_event(1))

    def hyperparameters(self) -> dict:
        return {"alpha0": self.alpha0}
