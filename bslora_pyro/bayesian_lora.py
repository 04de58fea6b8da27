"""A Hugging Face model with rank-gated LoRA, written as a Pyro model and guide.

Pyro sees only the adapter's random variables: one gate site per adapted module (event
shape [r]) plus whatever latents the prior adds, and the observed answers. The LoRA
factors and any task head are ordinary deterministic ``nn.Parameter``s of the network.
"""

from __future__ import annotations

from typing import Protocol

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from bslora_pyro.adapter import AdapterConfig, GatedLoraLinear, inject_gated_lora
from bslora_pyro.adapter.factor_prior import check_factor_prior_std, observe_factor_prior
from bslora_pyro.adapter.inject import adapter_parameters
from bslora_pyro.models import GatePrior, GuideConfig, get_prior


class Scorer(Protocol):
    """Maps a batch of questions to choice logits ``[num_draws, B, C]``.

    Every forward must lay its rows out draw-major (see :class:`GatedLoraLinear`).
    """

    def logits(self, model: nn.Module, batch, num_draws: int = 1) -> torch.Tensor: ...


class BayesianLora(nn.Module):
    """Frozen backbone + gated LoRA + a gate prior with its guide.

    Args:
        backbone: a Hugging Face model (or any module with Linear/Conv1D layers).
        scorer: turns a batch into choice logits (``bslora_pyro.scoring.ChoiceScorer``).
        adapter: which layers to adapt, rank and scale.
        prior: a prior name from :mod:`bslora_pyro.models` or a ``GatePrior`` class.
        prior_kwargs: the prior's hyperparameters, e.g. ``{"p0": 0.5}``.
        guide: the variational family settings (temperature, straight-through, ...).
        factor_prior_std: a Gaussian prior N(0, std^2) on the LoRA factors, whose point
            estimates are then MAP rather than maximum likelihood (``None``: no prior).
    """

    def __init__(
        self,
        backbone: nn.Module,
        scorer: Scorer,
        adapter: AdapterConfig | None = None,
        prior: str | type[GatePrior] = "bernoulli",
        prior_kwargs: dict | None = None,
        guide: GuideConfig | None = None,
        factor_prior_std: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.factor_prior_std = check_factor_prior_std(factor_prior_std, "bslora")
        self.scorer = scorer
        self.adapter_config = adapter or AdapterConfig()
        self.adapters: dict[str, GatedLoraLinear] = inject_gated_lora(backbone, self.adapter_config)
        prior_cls = get_prior(prior) if isinstance(prior, str) else prior
        ranks = {name: layer.r for name, layer in self.adapters.items()}
        self.prior = prior_cls(ranks, guide, **(prior_kwargs or {}))
        self.prior.to(next(backbone.parameters()).device)

    # --- gates --------------------------------------------------------------------------
    def set_gates(self, gates: dict[str, torch.Tensor] | None) -> None:
        """Put gates on every adapter (``None`` = all ones, i.e. plain LoRA)."""
        for name, layer in self.adapters.items():
            layer.gates = None if gates is None else gates[name]

    def posterior_mean_gates(self, threshold: float = 0.0) -> dict[str, torch.Tensor]:
        """Deterministic gates: q(z = 1), with ranks below ``threshold`` set to 0."""
        probs = self.prior.inclusion_probs()
        return {name: p * (p >= threshold) for name, p in probs.items()}

    @staticmethod
    def num_gate_groups(batch_size: int, num_draws: int, per_example: bool) -> int:
        return num_draws * batch_size if per_example else num_draws

    def _gate_plate(self, groups: int):
        return pyro.plate("gate_draws", groups, dim=-1)

    # --- Pyro program -------------------------------------------------------------------
    def model(
        self,
        batch,
        index: torch.Tensor,
        num_data: int,
        num_draws: int = 1,
        per_example: bool = False,
    ) -> torch.Tensor:
        """p(z) p(y | x, z; A, B): gates for ``num_draws`` draws, then the answers.

        ``index`` are the minibatch's positions in the dataset of size ``num_data``; the
        likelihood is scaled by ``num_data / len(index)`` through the ``data`` plate and
        averaged over draws, so the log joint is an unbiased estimate of the full one.
        """
        groups = self.num_gate_groups(len(index), num_draws, per_example)
        with self._gate_plate(groups), poutine.scale(scale=1.0 / groups):
            gates = self.prior.model()
        self.set_gates(gates)
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        with pyro.plate("draws", num_draws, dim=-2), poutine.scale(scale=1.0 / num_draws):
            with pyro.plate("data", num_data, subsample=index, dim=-1):
                pyro.sample("answer", dist.Categorical(logits=logits), obs=batch.labels)
        observe_factor_prior(self.adapters, self.factor_prior_std)
        return logits

    def guide(
        self,
        batch,
        index: torch.Tensor,
        num_data: int,
        num_draws: int = 1,
        per_example: bool = False,
        hard: bool = False,
    ) -> dict[str, torch.Tensor]:
        """q(z) (and q of the prior's other latents), one draw per gate group."""
        groups = self.num_gate_groups(len(index), num_draws, per_example)
        with self._gate_plate(groups), poutine.scale(scale=1.0 / groups):
            return self.prior.guide(hard=hard)

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def sample_gates(self, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` hard gate draws from the guide, shape [M, r] per module."""
        with self._gate_plate(num_samples):
            return {k: v.detach() for k, v in self.prior.guide(hard=True).items()}

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 10, deterministic: bool = False):
        """Choice logits ``[M, B, C]`` under M hard posterior gate draws (one batched
        forward), or ``[1, B, C]`` with gates at their posterior mean."""
        if deterministic:
            self.set_gates(self.posterior_mean_gates())
            return self.scorer.logits(self.backbone, batch, 1)
        self.set_gates(self.sample_gates(num_samples))
        return self.scorer.logits(self.backbone, batch, num_samples)

    # --- parameters ---------------------------------------------------------------------
    def factor_parameters(self) -> dict[str, nn.Parameter]:
        """LoRA factors and task-head weights (point estimates), by full name."""
        return adapter_parameters(self.adapters, self.backbone, self.adapter_config)

    def gate_parameters(self) -> dict[str, nn.Parameter]:
        """Variational parameters of the gates and of the prior's other latents."""
        return dict(self.prior.named_parameters())

    def expected_active_ranks(self) -> float:
        return float(sum(p.sum() for p in self.prior.inclusion_probs().values()))

    # --- training interface (used by bslora_pyro.inference.svi) ------------------------
    def set_progress(self, fraction: float) -> None:
        """Anneal the Concrete temperature linearly when ``guide.temperature_final`` is set."""
        config = self.prior.guide_config
        if config.temperature_final is not None:
            start, end = config.temperature, config.temperature_final
            self.prior.temperature = start + (end - start) * min(max(fraction, 0.0), 1.0)

    def training_loss(self, batch, index, num_data, num_draws=1, per_example=False, elbo=None):
        """The negative ELBO terms of one minibatch (see :class:`ExactELBO`)."""
        from bslora_pyro.inference.elbo import ExactELBO

        elbo = elbo or ExactELBO()
        return elbo(self.model, self.guide, batch, index, num_data, num_draws, per_example)

    def param_groups(self, lr_factors: float, lr_gates: float, weight_decay: float = 0.0):
        """AdamW groups: factors (and heads) at ``lr_factors``, variational gate
        parameters at ``lr_gates`` without weight decay."""
        return [
            {
                "params": list(self.factor_parameters().values()),
                "lr": lr_factors,
                "weight_decay": weight_decay,
                "name": "factors",
            },
            {
                "params": list(self.gate_parameters().values()),
                "lr": lr_gates,
                "weight_decay": 0.0,
                "name": "gates",
            },
        ]

    def training_metrics(self) -> dict[str, float]:
        return {"active_ranks": self.expected_active_ranks(), "tau": float(self.prior.temperature)}
