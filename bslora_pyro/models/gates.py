"""Distributions over one module's gate vector ``z in {0, 1}^r`` used by the guides.

Each has event shape ``[r]`` and, beside ``rsample`` (a relaxed draw for reparametrised
gradients) and ``sample`` (exact hard gates), the two quantities the exact gate KL needs:
:meth:`GateDistribution.inclusion_probs` (the marginals q(z_j = 1)) and
:meth:`GateDistribution.discrete_entropy` (the entropy of the discrete distribution the
relaxation stands for). ``hard=True`` makes ``pyro.sample`` draw exact 0/1 gates.
"""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import torch
from torch.distributions import constraints, kl_divergence, register_kl
from torch.distributions.utils import broadcast_all

#: the largest rank whose 2^r gate configurations are enumerated for exact KLs
MAX_ENUMERATED_RANK = 16


class GateDistribution(dist.TorchDistribution):
    """Base of gate-vector distributions (event shape ``[r]``)."""

    support = constraints.independent(constraints.unit_interval, 1)
    hard = False

    @property
    def has_rsample(self) -> bool:  # hard draws are not reparametrised
        return not self.hard

    def inclusion_probs(self) -> torch.Tensor:
        """q(z_j = 1), shape ``batch_shape + [r]``."""
        raise NotImplementedError

    def discrete_entropy(self) -> torch.Tensor:
        """Entropy of the discrete gate distribution, shape ``batch_shape``."""
        raise NotImplementedError


class ConcreteGate(GateDistribution):
    """Independent gates ``z_j ~ Bernoulli(sigmoid(logits_j))``, relaxed for gradients by
    the binary Concrete (Gumbel-sigmoid) at ``temperature``; with ``straight_through`` the
    forward value of a relaxed draw is the hard gate ``1[z > 1/2]`` while gradients flow
    through the relaxed one."""

    arg_constraints = {"logits": constraints.real}

    def __init__(
        self,
        temperature: torch.Tensor | float,
        logits: torch.Tensor,
        straight_through: bool = False,
        hard: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        self.logits = logits
        self.temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        self.straight_through = straight_through
        self.hard = hard
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> ConcreteGate:
        shape = torch.Size(batch_shape) + self.event_shape
        return ConcreteGate(self.temperature, self.logits.expand(shape), self.straight_through,
                            self.hard)

    def _relaxed(self) -> dist.RelaxedBernoulli:
        return dist.RelaxedBernoulli(self.temperature, logits=self.logits)

    def as_bernoulli(self) -> dist.Bernoulli:
        return dist.Bernoulli(logits=self.logits)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        soft = self._relaxed().rsample(sample_shape)
        if not self.straight_through:
            return soft
        hard = (soft > 0.5).to(soft.dtype)
        return hard + soft - soft.detach()

    def sample(self, sample_shape=()) -> torch.Tensor:
        if self.hard:
            return self.as_bernoulli().sample(sample_shape)
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return self.as_bernoulli().log_prob(value).sum(-1)
        return self._relaxed().log_prob(value.clamp(1e-6, 1 - 1e-6)).sum(-1)

    def inclusion_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def discrete_entropy(self) -> torch.Tensor:
        return self.as_bernoulli().entropy().sum(-1)


def _bernoulli_base(p: dist.Distribution) -> dist.Bernoulli | None:
    base = p.base_dist if isinstance(p, dist.Independent) else p
    return base if isinstance(base, dist.Bernoulli) else None


@register_kl(ConcreteGate, dist.Independent)
def _kl_concrete_gate(q: ConcreteGate, p: dist.Independent) -> torch.Tensor:
    base = _bernoulli_base(p)
    if base is None or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return kl_divergence(q.as_bernoulli(), base).sum(-1)


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
    base = _bernoulli_base(p)
    if base is None or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    marginal = q.inclusion_probs()
    cross = marginal * torch.log(base.probs) + (1 - marginal) * torch.log1p(-base.probs)
    return -q.discrete_entropy() - cross.sum(-1)
