"""Distributions over one module's gate vector ``z in {0, 1}^r`` used by the guides.

Each has event shape ``[r]`` and, beside ``rsample`` (a relaxed draw for reparametrised
gradients) and ``sample`` (exact hard gates), the two quantities the exact gate KL needs:
:meth:`GateDistribution.inclusion_probs` (the marginals q(z_j = 1)) and
:meth:`GateDistribution.discrete_entropy` (the entropy of the discrete distribution the
relaxation stands for). ``hard=True`` makes ``pyro.sample`` draw exact 0/1 gates.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints, kl_divergence, register_kl


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


def bernoulli_base(p: dist.Distribution) -> dist.Bernoulli | None:
    """The factorised Bernoulli inside ``p`` (``Bernoulli(...).to_event(1)``), else None."""
    base = p.base_dist if isinstance(p, dist.Independent) else p
    return base if isinstance(base, dist.Bernoulli) else None


@register_kl(ConcreteGate, dist.Independent)
def _kl_concrete_gate(q: ConcreteGate, p: dist.Independent) -> torch.Tensor:
    base = bernoulli_base(p)
    if base is None or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return kl_divergence(q.as_bernoulli(), base).sum(-1)
