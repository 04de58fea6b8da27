"""The exact negative ELBO of the paper, as a ``pyro.infer.ELBO``.

    loss = N * E_q[NLL(minibatch)] + KL(q || p) [+ -log p(point estimates)]

The expected NLL is the Monte Carlo average over the guide's draws, scaled to the dataset
by the model's ``data`` plate. The KL is taken site by site:

- a gate site whose guide site carries ``infer["expected_kl"]`` (every guide in
  ``bslora_pyro.models.guides``, from its prior) uses it: ``E_q[KL(q(z) || p(z | latents))]`` over the guide's q of
  the latents, exact where the prior has a closed form (Bernoulli; Beta latents) and a
  many-draw Monte Carlo average where not (stick-breaking's E[log(1 - pi)]);
- any other site uses a closed form registered with ``torch.distributions.register_kl``
  (Beta-Beta for inclusion probabilities), else the single-sample estimate
  ``log q(x) - log p(x)`` (Kumaraswamy q).

``pyro.factor`` sites of the model (a Gaussian prior on the factors) enter the loss as a
separate ``penalty``. There is no KL weight unless one is asked for. ``pyro.infer.SVI``
drives it like any Pyro ELBO; :meth:`ExactELBO.terms` also returns the NLL / KL split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from bslora_pyro.models.base import unwrap
from bslora_pyro.models.gates import GateDistribution


@dataclass
class ELBOTerms:
    """The loss and its parts (all scalars; ``loss`` keeps the graph). ``penalty`` is the
    negative log prior of point-estimate parameters (``pyro.factor`` sites), 0 without."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    kl_by_site: dict[str, torch.Tensor]
    penalty: torch.Tensor = field(default_factory=lambda: torch.zeros(()))


def site_kl(guide_site: dict, model_site: dict, guide_trace) -> torch.Tensor:
    """KL(q || p) of one latent site, summed over its draws and scaled like the site."""
    expected = guide_site["infer"].get("expected_kl")
    q = unwrap(guide_site["fn"])
    if expected is not None and isinstance(q, GateDistribution):
        kl = expected(q, guide_trace)
    else:
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            value = guide_site["value"]
            kl = guide_site["fn"].log_prob(value) - model_site["fn"].log_prob(value)
    return (kl * guide_site["scale"]).sum()


def _latents(trace) -> set[str]:
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


class ExactELBO(ELBO):
    """The exact ELBO of the paper for ``pyro.infer.SVI`` (``loss``, ``loss_and_grads``,
    ``differentiable_loss``) and for the library's trainers (:meth:`terms`).

    Args:
        kl_weight: multiplies the KL; 1.0 (default) is the exact ELBO. Any other value is
            a tempered objective and is reported as such in logs.
    """

    def __init__(self, kl_weight: float = 1.0) -> None:
        super().__init__(num_particles=1)
        self.kl_weight = kl_weight

    def terms(self, model, guide, *args, **kwargs) -> ELBOTerms:
        """The loss and its NLL / KL / penalty parts for one draw of the guide."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        nll = torch.zeros(())
        penalty = torch.zeros(())
        kl_by_site: dict[str, torch.Tensor] = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                log_p = site["fn"].log_prob(site["value"]) * site["scale"]
                if site["mask"] is not None:
                    log_p = log_p * site["mask"]
                if isinstance(site["fn"], Unit):  # pyro.factor: a log prior, not data
                    penalty = penalty - log_p.sum()
                else:
                    nll = nll - log_p.sum()
                continue
            if name not in guide_trace.nodes:
                raise ValueError(f"latent site {name!r} of the model has no guide site")
            kl_by_site[name] = site_kl(guide_trace.nodes[name], site, guide_trace)
        extra = _latents(guide_trace) - _latents(model_trace)
        if extra:
            raise ValueError(f"guide sites without a model site: {sorted(extra)}")
        kl = sum(kl_by_site.values(), torch.zeros(()))
        return ELBOTerms(nll + self.kl_weight * kl + penalty, nll.detach(), kl.detach(),
                         kl_by_site, penalty.detach())

    # --- the pyro.infer.ELBO interface ----------------------------------------------------
    def _get_trace(self, model, guide, args, kwargs):
        """(model trace, guide trace) of one draw, as Pyro's estimators return them."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        return model_trace, guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.terms(model, guide, *args, **kwargs).loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.terms(model, guide, *args, **kwargs).loss.item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()
