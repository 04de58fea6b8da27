"""The shared interface of rank-gate priors and their variational guides.

A prior file in this folder defines one :class:`GatePrior` subclass with a unique
``name``. ``model()`` declares the prior's Pyro sample sites for every adapted module and
returns the gates ``z``; ``guide()`` declares the matching variational sites. Both are
called by :class:`bslora_pyro.BayesianLora` inside a ``gate_draws`` plate, so every site
gets a leading batch dimension of Monte Carlo draws; sites must be written with
``.to_event(1)`` over the rank dimension and nothing else.

The gate site of a module is named exactly after the module path; auxiliary latent sites
(inclusion probabilities, stick proportions) append a suffix (``"<path>/pi"``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import kl_divergence, register_kl


class PriorConfigError(ValueError):
    """A prior or guide hyperparameter outside its valid range."""


class ConcreteGate(dist.RelaxedBernoulli):
    """Binary Concrete (Gumbel-sigmoid) relaxation of ``Bernoulli(sigmoid(logits))``.

    ``rsample`` gives a relaxed gate in (0, 1) with reparametrised gradients; with
    ``straight_through`` the forward value is the hard gate ``1[z > 1/2]`` while gradients
    flow through the relaxed one. The KL to a ``Bernoulli`` prior is the closed-form KL of
    the discrete Bernoulli this relaxes (registered below): the paper's exact objective.
    """

    def __init__(
        self,
        temperature: torch.Tensor | float,
        logits: torch.Tensor,
        straight_through: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        super().__init__(temperature, logits=logits, validate_args=validate_args)
        self.straight_through = straight_through

    def rsample(self, sample_shape: tuple = ()) -> torch.Tensor:
        soft = super().rsample(sample_shape)
        if not self.straight_through:
            return soft
        hard = (soft > 0.5).to(soft.dtype)
        return hard + soft - soft.detach()

    def expand(self, batch_shape, _instance=None) -> ConcreteGate:
        batch_shape = torch.Size(batch_shape)
        return ConcreteGate(
            self.temperature, self.logits.expand(batch_shape), self.straight_through
        )

    def as_bernoulli(self) -> dist.Bernoulli:
        return dist.Bernoulli(logits=self.logits)


@register_kl(ConcreteGate, dist.Bernoulli)
def _kl_concrete_gate_bernoulli(q: ConcreteGate, p: dist.Bernoulli) -> torch.Tensor:
    return kl_divergence(q.as_bernoulli(), p)


@dataclass
class GuideConfig:
    """Variational family settings shared by every prior.

    Args:
        temperature: Concrete temperature tau at the start of training.
        temperature_final: if set, tau is annealed linearly to this value over training.
        straight_through: hard gates in the forward pass, relaxed gradients.
        pi_family: family for latent inclusion probabilities / stick proportions
            (``"beta"`` with a closed-form KL, or ``"kumaraswamy"`` with a Monte Carlo KL).
    """

    temperature: float = 0.5
    temperature_final: float | None = None
    straight_through: bool = False
    pi_family: str = "beta"

    def __post_init__(self) -> None:
        for key in ("temperature", "temperature_final"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise PriorConfigError(f"guide.{key} must be positive, got {value!r}")
        if self.pi_family not in ("beta", "kumaraswamy"):
            raise PriorConfigError(
                f"guide.pi_family must be 'beta' or 'kumaraswamy', got {self.pi_family!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _key(module_path: str) -> str:
    return module_path.replace(".", "-")


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 20, x, torch.log(torch.expm1(x.clamp(max=20))))


def check_probability(name: str, value: float) -> float:
    if not 0.0 < value < 1.0:
        raise PriorConfigError(f"prior.{name} must be in (0, 1), got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise PriorConfigError(f"prior.{name} must be positive, got {value!r}")
    return float(value)


class GatePrior(nn.Module, ABC):
    """A prior on per-rank gates for a set of adapted modules, and its guide.

    Subclasses set ``name``, accept their hyperparameters as keyword arguments, create
    their variational parameters in ``__init__`` and implement :meth:`model`,
    :meth:`guide_latents` and :meth:`prior_inclusion_probs`. The gate logits
    ``phi`` (``self.gate_logits``) and the relaxed-Bernoulli gate site are shared.
    """

    name: ClassVar[str] = ""

    def __init__(self, module_ranks: dict[str, int], guide_config: GuideConfig | None = None):
        super().__init__()
        if not module_ranks:
            raise PriorConfigError("a gate prior needs at least one adapted module")
        self.module_ranks = dict(module_ranks)
        self.guide_config = guide_config or GuideConfig()
        self.temperature = self.guide_config.temperature
        self.gate_logits = nn.ParameterDict()

    # --- to implement -------------------------------------------------------------------
    @abstractmethod
    def model(self) -> dict[str, torch.Tensor]:
        """Sample the prior's sites for every module; return the gates by module path."""

    @abstractmethod
    def guide_latents(self, module: str) -> None:
        """Sample the guide's auxiliary latent sites of one module (none for Bernoulli)."""

    @abstractmethod
    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        """Prior marginal P(z_j = 1) per module, shape [r]."""

    def hyperparameters(self) -> dict:
        """The keyword arguments that rebuild this prior (saved with a posterior)."""
        return {}

    # --- shared -------------------------------------------------------------------------
    def init_gate_logits(self, probs: dict[str, torch.Tensor]) -> None:
        """Start q(z) at ``probs`` (the prior's marginal): phi = logit(p)."""
        for module, p in probs.items():
            self.gate_logits[_key(module)] = nn.Parameter(torch.logit(p.float()))

    def logits_of(self, module: str) -> torch.Tensor:
        return self.gate_logits[_key(module)]

    def guide(self, hard: bool = False) -> dict[str, torch.Tensor]:
        """Sample the variational sites; ``hard`` draws exact Bernoulli gates (prediction)."""
        gates = {}
        for module in self.module_ranks:
            self.guide_latents(module)
            logits = self.logits_of(module)
            if hard:
                fn = dist.Bernoulli(logits=logits)
            else:
                fn = ConcreteGate(self.temperature, logits, self.guide_config.straight_through)
            gates[module] = pyro.sample(module, fn.to_event(1))
        return gates

    def inclusion_probs(self) -> dict[str, torch.Tensor]:
        """Posterior q(z_j = 1) per module, shape [r]."""
        return {m: torch.sigmoid(self.logits_of(m)).detach() for m in self.module_ranks}

    # --- helpers for Beta-process priors -------------------------------------------------
    def beta_params(self, prefix: str, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        """Create unconstrained variational parameters of a Beta/Kumaraswamy at (a, b)."""
        raw_a, raw_b = _inverse_softplus(a.float()), _inverse_softplus(b.float())
        self.register_parameter(f"{prefix}_a__{_key(module)}", nn.Parameter(raw_a))
        self.register_parameter(f"{prefix}_b__{_key(module)}", nn.Parameter(raw_b))

    def beta_family(self, prefix: str, module: str) -> dist.TorchDistribution:
        """q over a [0, 1]-valued latent: Beta or Kumaraswamy per ``guide.pi_family``."""
        a = F.softplus(getattr(self, f"{prefix}_a__{_key(module)}"))
        b = F.softplus(getattr(self, f"{prefix}_b__{_key(module)}"))
        if self.guide_config.pi_family == "kumaraswamy":
            return dist.Kumaraswamy(a, b)
        return dist.Beta(a, b)


def clamp_probs(p: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(p.dtype).eps
    return p.clamp(eps, 1 - eps)
