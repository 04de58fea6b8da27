"""Deep ensemble: K independently initialised LoRAs on one frozen backbone.

Design: the backbone carries one set of adapter layers. Each member owns its factor
parameters (A, B and any task head) and installs them into those layers, by reference,
before each of its forwards. A member is a complete :class:`PlainLora` method, so each is
trained on its own: a separate :class:`SVITrainer` (own AdamW state and schedule, own data
order from :func:`member_train_config`), one member after the other. The method's
``fit(examples, encode, config, progress, on_step)`` hook does exactly that (a runner may
instead loop over ``members`` itself). The ensemble object predicts only: ``[K, B, C]``
member logits, whose softmaxes the predictive averages.

Member 0 keeps the adapter's initial A (from the global seed); later members draw a fresh
Kaiming-uniform A from the global RNG; B starts at zero and heads at their initial value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import PositiveInt

NAME = "ensemble"


@dataclass
class EnsembleOptions(MethodOptions):
    """``members`` K (default 3)."""

    members: PositiveInt = 3


OPTIONS = EnsembleOptions


class EnsembleMember(PlainLora):
    """One LoRA of the ensemble, sharing the backbone's adapter layers."""

    def __init__(self, backbone, scorer, adapter, adapters, index: int) -> None:
        super().__init__(backbone, scorer, adapter, name=f"{NAME}.member{index}", adapters=adapters)
        current = super().factor_parameters()
        self.names = list(current)
        own = []
        for name, p in current.items():
            q = p.detach().clone()
            if index > 0 and name.endswith(".lora_A"):
                nn.init.kaiming_uniform_(q, a=math.sqrt(5))
            own.append(nn.Parameter(q, requires_grad=True))
        self.own = nn.ParameterList(own)

    def install(self) -> None:
        """Make this member's parameters the ones the adapter layers (and heads) use."""
        for name, p in zip(self.names, self.own, strict=True):
            path, _, leaf = name.rpartition(".")
            setattr(self.backbone.get_submodule(path), leaf, p)

    def prepare(self, draws: int, sample: bool) -> None:
        super().prepare(draws, sample)
        self.install()

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        return dict(zip(self.names, self.own, strict=True))


def member_train_config(config, index: int, num_members: int):
    """The training config of member ``index``: its own seed, hence its own data order."""
    return dataclasses.replace(config, seed=config.seed * num_members + index)


def _tagged(on_step: Callable | None, index: int, monitor: Callable | None = None) -> Callable:
    def hook(trainer, record: dict) -> None:
        record["member"] = index
        if monitor is not None:
            monitor(trainer, record)  # adds val_nll before the record is logged
        if on_step is not None:
            on_step(trainer, record)

    return hook


class DeepEnsemble(PlainLora):
    """K :class:`EnsembleMember` s; train them with :meth:`fit`."""

    trains_itself = True
    validates_members = True  # fit(..., monitor=...) validates and early-stops each member

    def __init__(self, backbone, scorer, adapter, num_members: int) -> None:
        super().__init__(backbone, scorer, adapter, name=NAME)
        self.members = nn.ModuleList(
            EnsembleMember(backbone, scorer, adapter, self.adapters, k) for k in range(num_members)
        )
        self.members[0].install()

    def fit(self, examples: Sequence, encode: Callable[[Sequence], object], config,
            progress: bool = True, on_step: Callable | None = None,
            device: torch.device | str | None = None,
            monitor: Callable | None = None) -> list | dict:
        """Train every member with its own :class:`SVITrainer`, one after the other.

        ``on_step(trainer, record)`` is called after each step; records carry ``member``.
        ``device`` defaults to the parameters' device. ``monitor(member, k)`` builds a
        :class:`~bslora_pyro.inference.early_stopping.ValidationMonitor` per member, which
        validates that member alone and, with early stopping, restores its best validated
        step: each member stops on its own. Returns the K trainers, or with ``monitor``
        what early stopping did per member (``{"members": [...]}``).
        """
        from bslora_pyro.inference.svi import SVITrainer

        device = device or next(self.members[0].parameters()).device
        trainers, stopped = [], []
        for k, member in enumerate(self.members):
            config_k = member_train_config(config, k, len(self.members))
            trainer = SVITrainer(member, encode, config_k, device)
            watch = monitor(member, k) if monitor is not None else None
            trainer.fit(examples, progress=progress, on_step=_tagged(on_step, k, watch))
            if watch is not None and watch.early_stopping:
                stopped.append(watch.restore_best(trainer))
            trainers.append(trainer)
        if monitor is not None:
            return {"members": stopped} if stopped else {}
        return trainers

    def training_loss(self, *args, **kwargs):
        raise MethodError(
            "the ensemble trains member by member: call its fit(...) or "
            "train each of method.members with its own SVITrainer"
        )

    def param_groups(self, *args, **kwargs):
        return self.training_loss()

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        return {
            f"member{k}.{name}": p
            for k, member in enumerate(self.members)
            for name, p in member.factor_parameters().items()
        }

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        """Member logits ``[K, B, C]`` (``num_samples`` does not apply)."""
        return torch.cat([m.predict_logits(batch, 1, deterministic) for m in self.members])


def build(backbone, scorer, adapter, options: dict) -> DeepEnsemble:
    """Options: see :class:`EnsembleOptions`."""
    k = take_options(NAME, options, OPTIONS, adapter).members
    method = DeepEnsemble(backbone, scorer, adapter, k)
    method.options = {"members": k}
    return method


def load(directory: str | Path, backbone, scorer) -> DeepEnsemble:
    return load_method(NAME, build, directory, backbone, scorer)
