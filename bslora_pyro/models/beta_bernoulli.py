"""A finite beta process: pi ~ Beta(a, b), z_j ~ Bernoulli(pi).

``shared=False`` gives every rank its own inclusion probability pi_j; ``shared=True`` one
pi per module, which lets a module learn how many of its ranks to keep. Marginally
P(z_j = 1) = a / (a + b). With a Beta q(pi) the gate KL is exact: E[log pi] and
E[log(1 - pi)] are digamma differences.
"""

from __future__ import annotations

import torch

from bslora_pyro.models.base import GatePrior, LatentSite, beta_log_moments
from bslora_pyro.typed import PositiveFloat


class BetaBernoulliPrior(GatePrior):
    name = "beta_bernoulli"

    def __init__(
        self, module_ranks: dict[str, int], a: PositiveFloat = 1.0, b: PositiveFloat = 1.0,
        shared: bool = False,
    ) -> None:
        super().__init__(module_ranks)
        self.a = float(a)
        self.b = float(b)
        self.shared = bool(shared)

    def latent_sites(self) -> list[LatentSite]:
        sizes = {m: 1 if self.shared else r for m, r in self.module_ranks.items()}
        return [LatentSite(f"{m}/pi", torch.full((n,), self.a), torch.full((n,), self.b), (m,))
                for m, n in sizes.items()]

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        mean = self.a / (self.a + self.b)
        return {m: torch.full((r,), mean) for m, r in self.module_ranks.items()}

    def gate_probs(self, module: str, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        pi = latents[f"{module}/pi"]
        return pi.expand(pi.shape[:-1] + (self.module_ranks[module],))

    def expected_log_probs(self, module, latent_dists):
        moments = beta_log_moments(latent_dists[f"{module}/pi"])
        if moments is None:  # Kumaraswamy q(pi): Monte Carlo over many draws of pi
            return super().expected_log_probs(module, latent_dists)
        r = self.module_ranks[module]
        return tuple(m.expand(m.shape[:-1] + (r,)) for m in moments)

    def hyperparameters(self) -> dict:
        return {"a": self.a, "b": self.b, "shared": self.shared}
