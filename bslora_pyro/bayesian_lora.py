"""A Hugging Face model with rank-gated LoRA, written as a Pyro model and guide.

Pyro sees only the adapter's random variables: one gate site per adapted module (event
shape [r]) plus whatever latents the prior adds, and the observed answers. The LoRA
factors and any task head are ordinary deterministic ``nn.Parameter`` s of the network,
registered with ``pyro.module`` so that ``pyro.infer.SVI`` can train them too.

Monte Carlo draws are ``num_draws`` everywhere inside (model, guide, scorer, gated layers);
the public names are the config's: ``predict.num_samples`` (M, the ``num_samples`` of
:meth:`BayesianLora.predict_logits` and ``predict``) and ``train.num_particles`` (S, passed
as ``num_draws`` by the trainers). Gate *groups* are the draws, or draws x examples with
``per_example`` masks.

Gates are global latents (one draw per Monte Carlo draw, or per example and draw with
``per_example`` masks) unless the guide is amortized (``guide.local``): then every example
has its own gates ``z_i ~ p(z)``, drawn from ``q(z_i | x_i)`` inside the data plate.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from bslora_pyro.adapter import AdapterConfig, GatedLoraLinear, inject_gated_lora
from bslora_pyro.adapter.factor_prior import check_factor_prior_std, observe_factor_prior
from bslora_pyro.adapter.inject import adapter_parameters
from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.models import GatePrior, build_guide, check_prior_kwargs, get_prior
from bslora_pyro.models.guides import guide_spec
from bslora_pyro.persistence import POSTERIOR_WEIGHTS, load_posterior_state, read_posterior_config

_INSTANCES = itertools.count()


class Scorer(Protocol):
    """Maps a batch of questions to choice logits ``[num_draws, B, C]``.

    Every forward must lay its rows out draw-major (see :class:`GatedLoraLinear`).
    """

    def logits(self, model: nn.Module, batch, num_draws: int = 1) -> torch.Tensor: ...


class _Params(nn.Module):
    """The point-estimate parameters as one module for ``pyro.module`` (not a submodule)."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterDict({k.replace(".", "-"): p for k, p in params.items()})


class BayesianLora(nn.Module):
    """Frozen backbone + gated LoRA + a gate prior and a guide over its sites.

    Args:
        backbone: a Hugging Face model (or any module with Linear/Conv1D layers).
        scorer: turns a batch into choice logits (``bslora_pyro.scoring.ChoiceScorer``).
        adapter: which layers to adapt, rank and scale.
        prior: a prior name from :mod:`bslora_pyro.models` or a ``GatePrior`` class.
        prior_kwargs: the prior's hyperparameters, e.g. ``{"p0": 0.5}``.
        guide: a guide name from :mod:`bslora_pyro.models.guides`, a mapping
            ``{"name": ..., **options}``, a ``GuideConfig`` (mean-field options) or a class.
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
        guide: Any = None,
        factor_prior_std: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer
        self.factor_prior_std = check_factor_prior_std(factor_prior_std, "bslora")
        self.adapter_config = adapter or AdapterConfig()
        self.adapters: dict[str, GatedLoraLinear] = inject_gated_lora(backbone, self.adapter_config)
        prior_cls = get_prior(prior) if isinstance(prior, str) else prior
        ranks = {name: layer.r for name, layer in self.adapters.items()}
        self.prior = prior_cls(ranks, **check_prior_kwargs(prior_cls, prior_kwargs))
        feature_size = getattr(getattr(backbone, "config", None), "hidden_size", None)
        self.gate_guide = build_guide(guide, self.prior, feature_size=feature_size)
        device = next(backbone.parameters()).device
        self.prior.to(device)
        self.gate_guide.to(device)
        self.pyro_name = f"bslora{next(_INSTANCES)}"
        object.__setattr__(self, "_factor_module", _Params(self.factor_parameters()))

    @staticmethod
    def guide_class(guide: Any):
        return guide_spec(guide)[0]

    # --- gates --------------------------------------------------------------------------
    def set_gates(self, gates: dict[str, torch.Tensor] | None) -> None:
        """Put gates on every adapter (``None`` = all ones, i.e. plain LoRA)."""
        for name, layer in self.adapters.items():
            layer.gates = None if gates is None else gates[name]

    def inclusion_probs(self, batch=None) -> dict[str, torch.Tensor]:
        """q(z_j = 1) per module (``[B, r]`` for ``batch`` under an amortized guide; the
        mean training input without one)."""
        return self.gate_guide.inclusion_probs(self._features(batch))

    def posterior_mean_gates(self, threshold: float = 0.0, batch=None) -> dict[str, torch.Tensor]:
        """Deterministic gates: q(z = 1), with ranks below ``threshold`` set to 0."""
        probs = self.inclusion_probs(batch)
        return {name: p * (p >= threshold) for name, p in probs.items()}

    @property
    def local_gates(self) -> bool:
        return self.gate_guide.local

    def _features(self, batch) -> torch.Tensor | None:
        if batch is None or not self.local_gates:
            return None
        return self.scorer.question_features(self.backbone, batch)

    @staticmethod
    def _plates(index: torch.Tensor, num_data: int, num_draws: int):
        """The ``draws`` and ``data`` plates of one call (a plate may be entered twice)."""
        return (pyro.plate("draws", num_draws, dim=-2),
                pyro.plate("data", num_data, subsample=index, dim=-1))

    @contextmanager
    def _gate_plate(self, plates, num_draws: int, batch_size: int, per_example: bool):
        """Where gate sites live: per draw (or per draw and example) in a ``gate_draws``
        plate scaled to count the KL once; local gates in the ``draws`` x ``data`` plates."""
        draws, data = plates
        with ExitStack() as stack:
            if self.local_gates:
                stack.enter_context(draws)
                stack.enter_context(poutine.scale(scale=1.0 / num_draws))
                stack.enter_context(data)
            else:
                groups = num_draws * batch_size if per_example else num_draws
                stack.enter_context(pyro.plate("gate_draws", groups, dim=-1))
                stack.enter_context(poutine.scale(scale=1.0 / groups))
            yield

    @staticmethod
    def _flat(gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gates ``[..., r]`` as draw-major groups ``[G, r]``."""
        return {name: g.reshape(-1, g.shape[-1]) for name, g in gates.items()}

    # --- Pyro program -------------------------------------------------------------------
    def model(self, batch, index: torch.Tensor, num_data: int, num_draws: int = 1,
              per_example: bool = False, hard: bool = False) -> torch.Tensor:
        """p(z) p(y | x, z; A, B): gates for ``num_draws`` draws, then the answers.

        ``index`` are the minibatch's positions in the dataset of size ``num_data``; the
        likelihood is scaled by ``num_data / len(index)`` through the ``data`` plate and
        averaged over draws, so the log joint is an unbiased estimate of the full one.
        ``hard`` is the guide's argument (ignored here). The per-draw choice probabilities
        are recorded as the deterministic site ``probs`` ``[num_draws, B, C]``.
        """
        pyro.module(self.pyro_name, self._factor_module)
        plates = self._plates(index, num_data, num_draws)
        gates = self.prior.model(self._gate_plate(plates, num_draws, len(index), per_example))
        self.set_gates(self._flat(gates))
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        pyro.deterministic("probs", torch.softmax(logits, -1), event_dim=3)
        with plates[0], poutine.scale(scale=1.0 / num_draws), plates[1]:
            pyro.sample("answer", dist.Categorical(logits=logits), obs=batch.labels)
        observe_factor_prior(self.adapters, self.factor_prior_std)
        return logits

    def guide(self, batch, index: torch.Tensor, num_data: int, num_draws: int = 1,
              per_example: bool = False, hard: bool = False) -> dict[str, torch.Tensor]:
        """q of the prior's sites, one gate draw per gate group (``hard``: exact 0/1)."""
        pyro.module(f"{self.pyro_name}_guide", self.gate_guide)
        plates = self._plates(index, num_data, num_draws)
        plate = self._gate_plate(plates, num_draws, len(index), per_example)
        return self.gate_guide(plate, self._features(batch), hard=hard)

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def sample_gates(self, num_draws: int, batch=None) -> dict[str, torch.Tensor]:
        """``num_draws`` hard gate draws from the guide, ``[M, r]`` per module (``[M * B,
        r]``, draw-major, for ``batch`` under an amortized guide)."""
        size = batch.num_examples if self.local_gates else 1
        plates = self._plates(torch.arange(size), size, num_draws)
        plate = self._gate_plate(plates, num_draws, size, per_example=False)
        gates = self.gate_guide(plate, self._features(batch), hard=True)
        return {k: v.detach() for k, v in self._flat(gates).items()}

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 10, deterministic: bool = False):
        """Choice logits ``[M, B, C]`` under M hard posterior gate draws (one batched
        forward), or ``[1, B, C]`` with gates at their posterior mean."""
        if deterministic:
            self.set_gates(self.posterior_mean_gates(batch=batch))
            return self.scorer.logits(self.backbone, batch, 1)
        self.set_gates(self.sample_gates(num_samples, batch))
        return self.scorer.logits(self.backbone, batch, num_samples)

    # --- parameters ---------------------------------------------------------------------
    def factor_parameters(self) -> dict[str, nn.Parameter]:
        """LoRA factors and task-head weights (point estimates), by full name."""
        return adapter_parameters(self.adapters, self.backbone, self.adapter_config)

    def gate_parameters(self) -> dict[str, nn.Parameter]:
        """Variational parameters of the guide (gates, the prior's latents, networks)."""
        return dict(self.gate_guide.named_parameters())

    def training_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers training changes (the guide's statistics), saved in checkpoints."""
        return {f"guide.{k}": v for k, v in self.gate_guide.named_buffers()}

    def expected_active_ranks(self) -> float:
        return float(sum(p.sum() for p in self.inclusion_probs().values()))

    # --- training interface (used by bslora_pyro.inference.svi) ------------------------
    def set_progress(self, fraction: float) -> None:
        """The guide's temperature schedule (linear annealing when it has one)."""
        self.gate_guide.set_progress(fraction)

    def training_loss(self, batch, index, num_data, num_draws=1, per_example=False, elbo=None):
        """The negative ELBO terms of one minibatch (see :class:`ExactELBO`)."""
        elbo = elbo or ExactELBO()
        return elbo.terms(self.model, self.guide, batch, index, num_data, num_draws, per_example)

    def param_groups(self, lr_factors: float, lr_gates: float, weight_decay: float = 0.0):
        """AdamW groups: factors (and heads) at ``lr_factors``, variational parameters at
        ``lr_gates`` without weight decay."""
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
        return {"active_ranks": self.expected_active_ranks(),
                "tau": float(self.gate_guide.temperature)}


def load_posterior(directory: str | Path, backbone: nn.Module, scorer: Scorer,
                   cls: type[BayesianLora] | None = None) -> BayesianLora:
    """Rebuild a :class:`BayesianLora` (or the subclass ``cls``) on ``backbone`` and load
    the posterior saved by :func:`bslora_pyro.persistence.save_posterior`."""
    config = read_posterior_config(directory)
    method = (cls or BayesianLora)(
        backbone,
        scorer,
        AdapterConfig(**config["adapter"]),
        prior=config["prior"]["name"],
        prior_kwargs=config["prior"]["hyperparameters"],
        guide=dict(config["guide"]),  # without "name" (version 1 files): mean-field
        factor_prior_std=config.get("factor_prior_std"),
    )
    load_posterior_state(method, Path(directory) / POSTERIOR_WEIGHTS)
    return method
