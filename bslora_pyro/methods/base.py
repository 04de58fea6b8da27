"""The method protocol, typed method options, and the plain LoRA most methods build on.

A *method* (config key ``method:``) is an object the runner trains, saves and predicts
with. :class:`Method` names what it must provide and the optional hooks, each with a
default that does nothing special: override a hook to use it.

:class:`PlainLora` is the gated model with every gate fixed at 1 and no latent variables
(maximum likelihood, or MAP with weight decay); the point-estimate baselines (MAP, MC
dropout, random rank masking, ensemble members, Laplace, temperature scaling) subclass it
and override :meth:`PlainLora.prepare` (what the layers do in the next forward) or the
predictive. :func:`save_method` / :func:`load_method` are their safetensors + JSON format;
:func:`take_options` builds a method's options dataclass from its ``method_options``.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from safetensors.torch import load_file
from torch import nn

from bslora_pyro.adapter import AdapterConfig, GatedLoraLinear, inject_gated_lora
from bslora_pyro.adapter.factor_prior import check_factor_prior_std, observe_factor_prior
from bslora_pyro.adapter.inject import adapter_parameters
from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.inference.svi import SVITrainer
from bslora_pyro.methods import MethodError
from bslora_pyro.persistence import atomic_save_tensors, atomic_write_text, copy_tensors
from bslora_pyro.typed import ConfigError, check_ranges, check_type, close_match, field_types

METHOD_WEIGHTS = "method.safetensors"
METHOD_CONFIG = "method.json"
FORMAT = "bslora-method"

Options = TypeVar("Options")


# --------------------------------------------------------------------------- options


@dataclasses.dataclass
class MethodOptions:
    """Base of a method's options (its ``method_options`` section): typed fields with
    defaults, numeric ones with their range declared on the type (``bslora_pyro.typed``);
    :meth:`check` refuses values that depend on another setting (the adapter)."""

    def __post_init__(self) -> None:
        check_ranges(self, "method_options", MethodError)

    def check(self, adapter: AdapterConfig | None) -> None:
        """Raise :class:`MethodError` naming the option for a bad value (``adapter``: the
        config's adapter, for options bounded by it; ``None`` when not known)."""


def take_options(
    name: str, options: dict, cls: type[Options], adapter: AdapterConfig | None = None
) -> Options:
    """``cls`` built from ``options``: an unknown option (with the closest known one), a
    value of the wrong type or out of its declared range, or a bad value is a one-line
    :class:`MethodError` naming it."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        close = close_match(unknown[0], fields)
        hint = f"did you mean {close}?" if close else f"it takes: {', '.join(fields) or 'none'}"
        raise MethodError(f"method {name!r} has no option {unknown[0]!r} ({hint})")
    hints = field_types(cls)
    try:
        values = {k: check_type(v, hints[k], f"method_options.{k}") for k, v in options.items()}
    except ConfigError as error:
        raise MethodError(f"method {name!r}: {error}") from None
    built = cls(**values)
    built.check(adapter)
    return built


# --------------------------------------------------------------------------- protocol


class Method(ABC):
    """What the runner may ask of a method; the hooks below have do-nothing defaults.

    Besides :meth:`predict_logits`, a trainable method provides what
    :class:`~bslora_pyro.inference.svi.SVITrainer` drives: ``training_loss(batch, index,
    num_data, num_draws, per_example, elbo=None)``, ``param_groups(lr_factors, lr_gates,
    weight_decay)``, ``training_metrics()`` and ``set_progress(fraction)``.
    """

    name: str
    scorer: Any
    #: False: nothing to train (zero-shot); the runner goes straight to prediction
    trainable: bool = True
    #: True: :meth:`fit` trains the method (several members, or on part of the data); the
    #: runner then calls it instead of its own checkpointed SVI loop
    trains_itself: bool = False

    @abstractmethod
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        """Choice logits ``[M, B, C]`` (``M`` draws, 1 for deterministic methods)."""

    def fit(
        self,
        examples: Sequence,
        encode: Callable[[Sequence], object],
        config,
        progress: bool = True,
        on_step: Callable | None = None,
        device: torch.device | str | None = None,
    ) -> list:
        """Train on ``examples``; returns the trainers. Default: one :class:`SVITrainer`
        on the parameters' device (nothing for an untrainable method)."""
        if not self.trainable:
            return []
        device = device or next(self.parameters()).device
        trainer = SVITrainer(self, encode, config, device)
        trainer.fit(examples, progress=progress, on_step=on_step)
        return [trainer]

    def fit_posthoc(self, examples: Sequence, encode: Callable[[Sequence], object]) -> dict | None:
        """Fitting after training, on the training set (Laplace, temperature scaling)."""
        return None

    def after_step(self, step: int, num_data: int, config) -> None:
        """An update of the method's own after the trainer's optimizer step ``step``
        (0-based) on ``num_data`` examples with train config ``config`` (none by default;
        BLoB's separate KL step)."""
        return None

    def save(self, directory: str | Path) -> Path | None:
        """Write the fitted method to ``directory`` (nothing to save by default)."""
        return None

    def gate_probabilities(self) -> dict[str, torch.Tensor] | None:
        """q(z_j = 1) per module for the gate log (``None``: the method has no gates)."""
        return None

    def active_ranks(self) -> float | None:
        """The expected number of active ranks (``None``: the method has no gates)."""
        return None


# --------------------------------------------------------------------------- plain LoRA


class PlainLora(nn.Module, Method):
    """LoRA point estimate: the Pyro model has only the observed answers.

    Args:
        backbone, scorer, adapter: as for :class:`~bslora_pyro.bayesian_lora.BayesianLora`.
        weight_decay: AdamW weight decay of the factors; ``None`` takes the training
            config's value (MLE), a number overrides it (MAP).
        name: the registry name recorded when saving.
        adapters: reuse adapters already injected into ``backbone`` (ensemble members).
        factor_prior_std: a Gaussian prior N(0, std^2) on the factors in the loss (an exact
            L2 penalty, unlike decoupled weight decay); ``None``: none.
    """

    stochastic = False  # True when forwards are random (several draws are meaningful)
    trainable = True

    def __init__(
        self,
        backbone: nn.Module,
        scorer,
        adapter: AdapterConfig,
        weight_decay: float | None = None,
        name: str = "mle",
        adapters: dict[str, GatedLoraLinear] | None = None,
        factor_prior_std: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.factor_prior_std = check_factor_prior_std(factor_prior_std, name)
        self.scorer = scorer
        self.adapter_config = adapter
        self.adapters = adapters if adapters is not None else inject_gated_lora(backbone, adapter)
        self.weight_decay = weight_decay
        self.name = name
        self.options: dict = {}

    # --- what the layers do in the next forward ----------------------------------------
    def prepare(self, draws: int, sample: bool) -> None:
        """Set up the adapters for a forward of ``draws`` draw-major row groups; ``sample``
        is False for a deterministic (mean) forward."""
        for layer in self.adapters.values():
            layer.gates = None
            layer.sampled_A = None

    # --- Pyro program -------------------------------------------------------------------
    def observe(self, batch, index, num_data: int, logits: torch.Tensor) -> None:
        """The answers, averaged over the draws and scaled to the dataset by ``data``."""
        draws = logits.shape[0]
        with pyro.plate("draws", draws, dim=-2), poutine.scale(scale=1.0 / draws):
            with pyro.plate("data", num_data, subsample=index, dim=-1):
                pyro.sample("answer", dist.Categorical(logits=logits), obs=batch.labels)
        observe_factor_prior(self.adapters, self.factor_prior_std)

    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        draws = num_draws if self.stochastic else 1
        self.prepare(draws, sample=True)
        logits = self.scorer.logits(self.backbone, batch, draws)
        self.observe(batch, index, num_data, logits)
        return logits

    def guide(self, *args, **kwargs) -> None:
        return None

    def training_loss(self, batch, index, num_data, num_draws=1, per_example=False, elbo=None):
        elbo = elbo or ExactELBO()
        return elbo.terms(self.model, self.guide, batch, index, num_data, num_draws, per_example)

    # --- parameters ---------------------------------------------------------------------
    def factor_parameters(self) -> dict[str, nn.Parameter]:
        return adapter_parameters(self.adapters, self.backbone, self.adapter_config)

    def param_groups(self, lr_factors, lr_gates, weight_decay=0.0):
        decay = weight_decay if self.weight_decay is None else self.weight_decay
        return [
            {
                "params": list(self.factor_parameters().values()),
                "lr": lr_factors,
                "weight_decay": decay,
                "name": "factors",
            }
        ]

    def training_metrics(self) -> dict[str, float]:
        return {}

    def set_progress(self, fraction: float) -> None:
        return None

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        """Choice logits ``[M, B, C]``: M draws for stochastic methods, else ``M = 1``."""
        draws = num_samples if self.stochastic and not deterministic else 1
        self.prepare(draws, sample=not deterministic)
        return self.scorer.logits(self.backbone, batch, draws)

    # --- save / load ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define the fitted method (live references)."""
        return {f"factors/{k}": v for k, v in self.factor_parameters().items()}

    def state_extra(self) -> dict:
        """JSON-serialisable fitted state beside the tensors."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        copy_tensors(self.state_tensors(), tensors)

    def save(self, directory: str | Path) -> Path:
        return save_method(self, directory)


def save_method(method, directory: str | Path) -> Path:
    """Write ``method.safetensors`` (fitted tensors) and ``method.json`` (name, adapter,
    options, JSON state) to ``directory``; both are written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": 1,
        "method": method.name,
        "adapter": method.adapter_config.to_dict(),
        "options": method.options,
        "state": method.state_extra(),
    }
    atomic_save_tensors(method.state_tensors(), directory / METHOD_WEIGHTS)
    atomic_write_text(directory / METHOD_CONFIG, json.dumps(config, indent=2))
    return directory


def load_method(name: str, build: Callable, directory: str | Path, backbone, scorer):
    """Rebuild method ``name`` with ``build`` on ``backbone`` and load its saved state."""
    directory = Path(directory)
    path = directory / METHOD_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no saved method at {directory}: {METHOD_CONFIG} is missing")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("method") != name:
        raise MethodError(
            f"{path} holds method {config.get('method')!r} (format {config.get('format')!r}), "
            f"not {name!r}"
        )
    method = build(backbone, scorer, AdapterConfig(**config["adapter"]), dict(config["options"]))
    method.load_state(load_file(str(directory / METHOD_WEIGHTS)), config["state"])
    return method
