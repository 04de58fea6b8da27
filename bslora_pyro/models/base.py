"""The interface of rank-gate priors (the generative side of the Pyro program).

A prior file in this folder defines one :class:`GatePrior` subclass with a unique
``name``. Its :meth:`GatePrior.model` samples the prior's global latents (inclusion
probabilities, stick proportions: :class:`LatentSite` s it declares in
:meth:`GatePrior.latent_sites`) and, inside the ``gate_plate`` it is given, one gate site
per adapted module (named exactly after the module path, event shape ``[r]``, written with
``.to_event(1)``). A latent may serve one module (``"<path>/pi"``) or a group of them
(``"<group>/pi"``, e.g. one inclusion probability per layer): the guides, the ELBO, the
ArviZ data, checkpoints and saved posteriors all work from the declared sites.

Every gate prior here is ``z_j ~ Bernoulli(pi_j)`` given the latents, so the gate term of
the KL is ``E_q[KL(q(z) || Bernoulli(pi))] = -H(q(z)) - sum_j q_j E[log pi_j] + (1 - q_j)
E[log(1 - pi_j)]``: :meth:`GatePrior.expected_log_probs` gives the two expectations under
the guide's q of the latents (exact for Bernoulli and Beta, lower-variance Monte Carlo where
no closed form exists); guides attach :meth:`GatePrior.expected_gate_kl` to their gate
sites (``infer={"expected_kl": ...}``, which ``poutine.replay`` carries to the model's
site) for :class:`~bslora_pyro.inference.elbo.ExactELBO`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bslora_pyro.models.gates import GateDistribution
from bslora_pyro.typed import ConfigError, check_arguments


class PriorConfigError(ValueError):
    """A prior or guide hyperparameter outside its valid range."""


@dataclass(frozen=True)
class LatentSite:
    """A latent in [0, 1] besides the gates, with a ``Beta(a, b)`` prior per element.

    ``name`` is the Pyro site (``"<module>/pi"`` or ``"<group>/pi"``), ``modules`` the adapted
    modules whose gates depend on it; guides start their q at ``(a, b)``.
    """

    name: str
    a: torch.Tensor
    b: torch.Tensor
    modules: tuple[str, ...]

    @property
    def shape(self) -> torch.Size:
        return self.a.shape

    @property
    def suffix(self) -> str:
        """What the latent is (``pi``, ``v``): the part of the name after the last ``/``."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def group(self) -> str:
        """The module or group it belongs to: the part of the name before the last ``/``."""
        return self.name.rsplit("/", 1)[0]


def check_hyperparameters(cls: type, kwargs: dict, where: str, owner: str,
                          skip: tuple[str, ...]) -> dict:
    """``kwargs`` of a prior or guide class checked against the types and ranges declared
    on its ``__init__`` (``bslora_pyro.typed``); a one-line :class:`PriorConfigError`
    naming ``where.<key>`` for an unknown keyword or a bad value."""
    try:
        return check_arguments(cls, dict(kwargs), where, owner, skip)
    except ConfigError as error:
        raise PriorConfigError(str(error)) from None


def check_prior_kwargs(cls: type[GatePrior], kwargs: dict | None, where: str = "prior") -> dict:
    """The hyperparameters of prior ``cls``, checked (see :func:`check_hyperparameters`)."""
    return check_hyperparameters(cls, kwargs or {}, where, f"prior {cls.name!r}",
                                 ("module_ranks",))


def clamp_probs(p: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(p.dtype).eps
    return p.clamp(eps, 1 - eps)


def beta_log_moments(q: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(E[log x], E[log(1 - x)])`` of a Beta in closed form (digammas); ``None`` for
    another family (the caller then estimates them)."""
    if not isinstance(q, dist.Beta):
        return None
    a, b = q.concentration1, q.concentration0
    total = torch.digamma(a + b)
    return torch.digamma(a) - total, torch.digamma(b) - total


def sampled_log_moments(
    q: dist.Distribution, transform: Callable[[torch.Tensor], torch.Tensor], draws: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[log f(x)]`` and ``E[log(1 - f(x))]`` by ``draws`` reparametrised draws of ``x``
    (cheap: no network forward), for latents without a closed form."""
    p = clamp_probs(transform(q.rsample((draws,))))
    return p.log().mean(0), torch.log1p(-p).mean(0)


def expected_bernoulli_kl(
    q: GateDistribution, log_p1: torch.Tensor, log_p0: torch.Tensor
) -> torch.Tensor:
    """``E[KL(q(z) || prod_j Bernoulli(pi_j))]`` from ``E[log pi]`` and ``E[log(1 - pi)]``
    (per gate draw, summed over the ``r`` ranks)."""
    marginal = q.inclusion_probs()
    cross = marginal * log_p1 + (1 - marginal) * log_p0
    return -q.discrete_entropy() - cross.sum(-1)


class GatePrior(nn.Module, ABC):
    """A prior on per-rank gates for a set of adapted modules.

    Subclasses set ``name``, take their hyperparameters as keyword arguments (types and
    ranges declared on ``__init__``, e.g. ``p0: OpenUnitFloat``: checked by name in
    :func:`check_prior_kwargs` before the prior is built), and implement
    :meth:`latent_sites`, :meth:`gate_probs` and :meth:`prior_inclusion_probs`; the Pyro
    program (:meth:`model`) and the exact gate KL follow from them. A prior holds no
    variational parameters: the guide (``bslora_pyro.models.guides``) does.
    """

    name: ClassVar[str] = ""
    #: Monte Carlo draws of the latents for expectations without a closed form
    latent_draws: ClassVar[int] = 64

    def __init__(self, module_ranks: dict[str, int]) -> None:
        super().__init__()
        if not module_ranks:
            raise PriorConfigError("a gate prior needs at least one adapted module")
        self.module_ranks = dict(module_ranks)
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    # --- to implement -------------------------------------------------------------------
    def latent_sites(self) -> list[LatentSite]:
        """The prior's latents besides the gates (none for a fixed Bernoulli prior)."""
        return []

    @abstractmethod
    def gate_probs(self, module: str, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        """P(z = 1 | latents) of one module's gates, shape ``[..., r]``."""

    @abstractmethod
    def prior_inclusion_probs(self) -> dict[str, torch.Tensor]:
        """Prior marginal P(z_j = 1) per module, shape [r]."""

    def hyperparameters(self) -> dict:
        """The keyword arguments that rebuild this prior (saved with a posterior)."""
        return {}

    # --- the Pyro program ---------------------------------------------------------------
    def model(self, gate_plate) -> dict[str, torch.Tensor]:
        """Sample the latents (outside ``gate_plate``: global), then every module's gates
        inside it; return the gates by module path."""
        device = self._device_probe.device
        latents = {
            site.name: pyro.sample(
                site.name,
                dist.Beta(site.a.to(device), site.b.to(device)).to_event(site.a.dim()),
            )
            for site in self.latent_sites()
        }
        gates = {}
        with gate_plate:
            for module in self.module_ranks:
                probs = clamp_probs(self.gate_probs(module, latents))
                gates[module] = pyro.sample(module, dist.Bernoulli(probs=probs).to_event(1))
        return gates

    # --- the gate KL --------------------------------------------------------------------
    def expected_log_probs(
        self, module: str, latent_dists: dict[str, dist.Distribution]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[log pi], E[log(1 - pi)])`` of one module's gate probabilities under the
        guide's distributions of the latents it depends on. The default draws the latents
        (``latent_draws`` at once); priors override it with closed forms where they exist."""
        draws = {name: q.rsample((self.latent_draws,)) for name, q in latent_dists.items()}
        p = clamp_probs(self.gate_probs(module, draws))
        return p.log().mean(0), torch.log1p(-p).mean(0)

    def expected_gate_kl(self, module: str, q: GateDistribution, guide_trace) -> torch.Tensor:
        """``E_q[KL(q(z) || p(z | latents))]`` of one module, per gate draw."""
        dists = {site.name: unwrap(guide_trace.nodes[site.name]["fn"])
                 for site in self.latent_sites() if module in site.modules}
        log_p1, log_p0 = self.expected_log_probs(module, dists)
        return expected_bernoulli_kl(q, log_p1, log_p0)

    # --- shared -------------------------------------------------------------------------
    def site_names(self) -> list[str]:
        """Every latent Pyro site of the prior: its latents, then one gate site per module."""
        return [site.name for site in self.latent_sites()] + list(self.module_ranks)


def unwrap(fn: dist.Distribution) -> dist.Distribution:
    """The distribution inside ``.to_event(...)`` (and ``.expand``) wrappers."""
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn
