"""The exact negative ELBO of the paper, as a module any torch loop can drive.

    loss = N * E_q[NLL(minibatch)] + KL(q || p)

The expected NLL is the Monte Carlo average over the guide's draws, scaled to the dataset
by the model's ``data`` plate. Each latent site's KL is closed-form where one is
registered with ``torch.distributions.register_kl`` (Bernoulli-Bernoulli for the gates,
Beta-Beta for inclusion probabilities) and a single-sample Monte Carlo estimate
``log q(x) - log p(x)`` otherwise. There is no KL weight unless one is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence


@dataclass
class ELBOTerms:
    """The loss and its parts (all scalars; ``loss`` keeps the graph). ``penalty`` is the
    negative log prior of point-estimate parameters (``pyro.factor`` sites), 0 without."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    kl_by_site: dict[str, torch.Tensor]
    penalty: torch.Tensor = field(default_factory=lambda: torch.zeros(()))


def _site_kl(guide_site: dict, model_site: dict) -> torch.Tensor:
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


class ExactELBO(nn.Module):
    """``ExactELBO()(model, guide, *args)`` returns :class:`ELBOTerms`.

    Args:
        kl_weight: multiplies the KL; 1.0 (default) is the exact ELBO. Any other value is
            a tempered objective and is reported as such in logs.
    """

    def __init__(self, kl_weight: float = 1.0) -> None:
        super().__init__()
        self.kl_weight = kl_weight

    def forward(self, model, guide, *args, **kwargs) -> ELBOTerms:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        nll = torch.zeros(())
        penalty = torch.zeros(())
        kl_by_site: dict[str, torch.Tensor] = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
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
            kl_by_site[name] = _site_kl(guide_trace.nodes[name], site)
        extra = _latents(guide_trace) - _latents(model_trace)
        if extra:
            raise ValueError(f"guide sites without a model site: {sorted(extra)}")
        kl = sum(kl_by_site.values(), torch.zeros(()))
        return ELBOTerms(nll + self.kl_weight * kl + penalty, nll.detach(), kl.detach(),
                         kl_by_site, penalty.detach())
