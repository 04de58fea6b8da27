"""The ordered (IBP stick-breaking) beta process.

v_k ~ Beta(alpha0, 1), pi_k = prod_{j<=k} v_j, z_k ~ Bernoulli(pi_k): inclusion
probabilities decrease with the rank index, so the posterior prefers low ranks first and
the effective rank of each module is learned. With a Beta q(v) the gate KL has no Monte
Carlo noise: E[log pi_k] is a sum of digamma differences, and E[log(1 - pi_k)] (no closed
form for k > 1) is the series -sum_n E[pi_k^n] / n, whose moments are products of Beta
moments, summed to ``series_terms`` terms plus a power-law estimate of the tail.
"""

from __future__ import annotations

import torch

from bslora_pyro.models.base import GatePrior, LatentSite, beta_log_moments
from bslora_pyro.typed import PositiveFloat


def expected_log1m_products(a: torch.Tensor, b: torch.Tensor, terms: int) -> torch.Tensor:
    """``E[log(1 - prod_{j<=k} v_j)]`` for every k, with independent ``v_j ~ Beta(a_j, b_j)``
    along the last dimension: ``-sum_n E[pi_k^n] / n`` with ``E[v^n] = B(a + n, b) / B(a, b)``.
    The terms decay like ``n^-p``; the tail past ``terms`` is ``t_N N / (p - 1)``."""
    dtype, a, b = a.dtype, a.double(), b.double()  # lgamma of ~terms: float32 is too coarse
    n = torch.arange(1, terms + 1, dtype=a.dtype, device=a.device).view(-1, *([1] * a.dim()))
    log_moment = (torch.lgamma(a + n) - torch.lgamma(a) + torch.lgamma(a + b)
                  - torch.lgamma(a + b + n))
    series = torch.exp(torch.cumsum(log_moment, dim=-1)) / n  # [terms, ..., r]
    last, half = series[-1], series[terms // 2 - 1]
    power = torch.log(half.clamp_min(1e-300) / last.clamp_min(1e-300)) / torch.log(
        torch.tensor(2.0, dtype=a.dtype))
    tail = torch.where(last > 0, last * terms / (power - 1).clamp_min(1e-3), torch.zeros_like(last))
    return -(series.sum(0) + tail).to(dtype)


class StickBreakingPrior(GatePrior):
    name = "stick_breaking"

    def __init__(self, module_ranks: dict[str, int], alpha0: PositiveFloat = 5.0) -> None:
        super().__init__(module_ranks)
        self.alpha0 = float(alpha0)

    def latent_sites(self) -> list[LatentSite]:
        return [LatentSite(f"{m}/v", torch.full((r,), self.alpha0), torch.ones(r), (m,))
                for m, r in self.module_ranks.items()]

    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        mean_v = self.alpha0 / (self.alpha0 + 1.0)
        return {m: mean_v ** torch.arange(1, r + 1, dtype=torch.float32)
                for m, r in self.module_ranks.items()}

    def gate_probs(self, module: str, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cumprod(latents[f"{module}/v"], dim=-1)

    series_terms = 4096

    def expected_log_probs(self, module, latent_dists):
        q = latent_dists[f"{module}/v"]
        moments = beta_log_moments(q)
        if moments is None:
            return super().expected_log_probs(module, latent_dists)
        log_pi = torch.cumsum(moments[0], dim=-1)  # exact: log pi_k = sum_j log v_j
        log_rest = expected_log1m_products(q.concentration1, q.concentration0, self.series_terms)
        log_rest = torch.cat([moments[1][..., :1], log_rest[..., 1:]], dim=-1)  # pi_1 = v_1
        return log_pi, log_rest

    def hyperparameters(self) -> dict:
        return {"alpha0": self.alpha0}
