"""A hierarchical beta process with one inclusion probability per layer.

pi_l ~ Beta(a, b) for every transformer block l, and z_j ~ Bernoulli(pi_l) for every rank
of every adapted module in that block; a module outside the blocks (``lm_head``) is a group
of its own. A layer's pi is one latent shared by its modules, so the data of all of them
decide how much of that layer to keep; its KL is counted once per layer.
"""

from __future__ import annotations

import torch

from bslora_pyro.models.base import GatePrior, LatentSite, beta_log_moments
from bslora_pyro.typed import PositiveFloat


def block_of(path: str) -> str:
    """``model.layers.27.self_attn.q_proj`` -> ``model.layers.27``; a path without a block
    index is its own group."""
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return path


class HierarchicalBetaPrior(GatePrior):
    name = "hierarchical_beta"

    def __init__(self, module_ranks: dict[str, int], a: PositiveFloat = 1.0,
                 b: PositiveFloat = 1.0) -> None:
        super().__init__(module_ranks)
        self.a = float(a)
        self.b = float(b)
        self.groups: dict[str, list[str]] = {}
        for module in self.module_ranks:
            self.groups.setdefault(block_of(module), []).append(module)

    def latent_sites(self) -> list[LatentSite]:
        return [LatentSite(f"{group}/pi", torch.full((1,), self.a), torch.full((1,), self.b),
                           tuple(modules)) for group, modules in self.groups.items()]

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        mean = self.a / (self.a + self.b)
        return {m: torch.full((r,), mean) for m, r in self.module_ranks.items()}

    def gate_probs(self, module: str, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        pi = latents[f"{block_of(module)}/pi"]
        return pi.expand(pi.shape[:-1] + (self.module_ranks[module],))

    def expected_log_probs(self, module, latent_dists):
        moments = beta_log_moments(latent_dists[f"{block_of(module)}/pi"])
        if moments is None:
            return super().expected_log_probs(module, latent_dists)
        r = self.module_ranks[module]
        return tuple(m.expand(m.shape[:-1] + (r,)) for m in moments)

    def hyperparameters(self) -> dict:
        return {"a": self.a, "b": self.b}
