"""A finite beta process: pi ~ Beta(a, b), z_j ~ Bernoulli(pi).

``shared=False`` gives every rank its own inclusion probability pi_j; ``shared=True`` one
pi per module, which lets a module learn how many of its ranks to keep. The guide is
mean-field: q(pi) Beta (closed-form KL) or Kumaraswamy (Monte Carlo KL) times the
relaxed-Bernoulli q(z). Marginally P(z_j = 1) = a / (a + b).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bslora_pyro.models.base import GatePrior, GuideConfig, check_positive, clamp_probs


class BetaBernoulliPrior(GatePrior):
    name = "beta_bernoulli"

    def __init__(
        self,
        module_ranks: dict[str, int],
        guide_config: GuideConfig | None = None,
        a: float = 1.0,
        b: float = 1.0,
        shared: bool = False,
    ) -> None:
        super().__init__(module_ranks, guide_config)
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)
        self.shared = bool(shared)
        for module, r in self.module_ranks.items():
            size = 1 if self.shared else r
            self.beta_params("pi", module, torch.full((size,), self.a), torch.full((size,), self.b))
        self.init_gate_logits(self.prior_inclusion_probs())

    def _size(self, r: int) -> int:
        return 1 if self.shared else r

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        mean = self.a / (self.a + self.b)
        return {m: torch.full((r,), mean) for m, r in self.module_ranks.items()}

    def model(self) -> dict[str, torch.Tensor]:
        gates = {}
        for module, r in self.module_ranks.items():
            like = self.logits_of(module).new_ones(self._size(r))
            pi = pyro.sample(f"{module}/pi", dist.Beta(like * self.a, like * self.b).to_event(1))
            probs = clamp_probs(pi.expand(pi.shape[:-1] + (r,)))
            gates[module] = pyro.sample(module, dist.Bernoulli(probs=probs).to_event(1))
        return gates

    def guide_latents(self, module: str) -> None:
        pyro.sample(f"{module}/pi", self.beta_family("pi", module).to_event(1))

    def hyperparameters(self) -> dict:
        return {"a": self.a, "b": self.b, "shared": self.shared}
