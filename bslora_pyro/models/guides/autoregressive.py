"""A correlated guide: an autoregressive Bernoulli over each module's r gates.

q(z) = prod_j Bernoulli(z_j | sigmoid(phi_j + sum_{k<j} W_jk z_k)) with W strictly lower
triangular, started at W = 0 and phi = logit(prior), i.e. at the prior. Ranks can then
substitute for each other (keep rank 3 only when rank 1 is off). The KL to a factorised
Bernoulli prior is exact, by enumerating the 2^r gate configurations (r <= 16).
"""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints, register_kl
from torch.distributions.utils import broadcast_all

from bslora_pyro.models.gates import GateDistribution, bernoulli_base
from bslora_pyro.models.guides.base import LogitGateGuide, param_key

#: the largest rank whose 2^r gate configurations are enumerated for exact KLs
MAX_ENUMERATED_RANK = 16


class AutoregressiveGate(GateDistribution):
    """Correlated gates: ``q(z) = prod_j Bernoulli(z_j | sigmoid(logits_j + sum_{k<j}
    weights_jk z_k))`` with ``weights`` strictly lower triangular. Relaxed draws run the same
    recursion on binary Concrete draws; the marginals and the entropy (hence the KL to a
    factorised Bernoulli) are computed exactly by enumerating the ``2^r`` configurations."""

    arg_constraints = {"logits": constraints.real, "weights": constraints.real}

    def __init__(
        self,
        temperature: torch.Tensor | float,
        logits: torch.Tensor,
        weights: torch.Tensor,
        hard: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        r = logits.shape[-1]
        if r > MAX_ENUMERATED_RANK:
            raise ValueError(f"the autoregressive guide enumerates 2^r gate configurations; "
                             f"r = {r} exceeds {MAX_ENUMERATED_RANK}")
        self.logits, self.weights = logits, weights.tril(-1)
        self.temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        self.hard = hard
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> AutoregressiveGate:
        shape = torch.Size(batch_shape) + self.event_shape
        return AutoregressiveGate(self.temperature, self.logits.expand(shape), self.weights,
                                  self.hard)

    def _conditional_logits(self, z: torch.Tensor, j: int) -> torch.Tensor:
        """Logit of ``z_j`` given ``z_<j`` (``z`` ``[..., r]``, only ``z_<j`` read)."""
        return self.logits[..., j] + (z[..., :j] * self.weights[j, :j]).sum(-1)

    def _draw(self, sample_shape, relaxed: bool) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.logits.shape
        z = self.logits.new_zeros(shape)
        columns = []
        for j in range(shape[-1]):
            logit = self._conditional_logits(z, j)
            if relaxed:
                column = dist.RelaxedBernoulli(self.temperature, logits=logit).rsample()
            else:
                column = dist.Bernoulli(logits=logit).sample()
            columns.append(column)
            z = torch.stack(columns + [z.new_zeros(z.shape[:-1])] * (shape[-1] - j - 1), -1)
        return torch.stack(columns, -1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        return self._draw(sample_shape, relaxed=True)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return self._draw(sample_shape, relaxed=not self.hard)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q of hard gate vectors ``value`` ``[..., r]``."""
        value, logits = broadcast_all(value, self.logits)
        total = torch.zeros(value.shape[:-1], dtype=logits.dtype, device=logits.device)
        for j in range(value.shape[-1]):
            logit = logits[..., j] + (value[..., :j] * self.weights[j, :j]).sum(-1)
            total = total + dist.Bernoulli(logits=logit).log_prob(value[..., j])
        return total

    def _configurations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every gate vector ``[2^r, r]`` and its probability ``[..., 2^r]``."""
        r = self.logits.shape[-1]
        table = torch.tensor(list(itertools.product((0.0, 1.0), repeat=r)),
                             dtype=self.logits.dtype, device=self.logits.device)
        log_q = self.log_prob(table.view((2**r,) + (1,) * len(self.batch_shape) + (r,)))
        return table, log_q.movedim(0, -1).exp()

    def inclusion_probs(self) -> torch.Tensor:
        table, probs = self._configurations()
        return probs @ table

    def discrete_entropy(self) -> torch.Tensor:
        _, probs = self._configurations()
        return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


@register_kl(AutoregressiveGate, dist.Independent)
def _kl_autoregressive_gate(q: AutoregressiveGate, p: dist.Independent) -> torch.Tensor:
    base = bernoulli_base(p)
    if base is None or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    marginal = q.inclusion_probs()
    cross = marginal * torch.log(base.probs) + (1 - marginal) * torch.log1p(-base.probs)
    return -q.discrete_entropy() - cross.sum(-1)


class AutoregressiveGuide(LogitGateGuide):
    name = "autoregressive"

    def __init__(self, prior, **options) -> None:
        super().__init__(prior, **options)
        self.gate_weights = nn.ParameterDict({
            param_key(m): nn.Parameter(torch.zeros(r, r)) for m, r in self.module_ranks.items()
        })

    def gate_distribution(self, module, features=None, hard=False) -> AutoregressiveGate:
        return AutoregressiveGate(self.temperature, self.logits_of(module),
                                  self.gate_weights[param_key(module)], hard=hard)
