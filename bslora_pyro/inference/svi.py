"""Stochastic variational inference: one objective, one AdamW optimizer.

The loop drives any *method* object that provides ``training_loss(batch, index,
num_data, num_draws, per_example)`` (returning :class:`ELBOTerms`), ``param_groups(
lr_factors, lr_gates, weight_decay)`` and ``training_metrics()``; ``BayesianLora`` and
the baselines do. A method may add its own update after each optimizer step
(``after_step(step, num_data, config)``: BLoB's separate KL step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.typed import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Seed,
    UnitFloat,
    check_ranges,
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


@dataclass
class TrainConfig:
    """SVI settings (paper defaults where it gives them).

    Args:
        steps: optimizer steps.
        batch_size: questions per step.
        lr_factors / lr_gates: AdamW learning rates of LoRA factors (and heads) and of the
            variational gate parameters (0 freezes them).
        weight_decay: AdamW weight decay on the factors (MAP uses 1e-5).
        warmup_ratio: share of steps with a linear warm-up; linear decay to 0 after.
        num_particles: S gate draws per step, run as one batched forward (the
            ``num_draws`` of the method's model and guide).
        per_example_masks: an independent draw for each question (same ELBO, lower
            variance) instead of one per batch.
        grad_clip: max global norm of the per-example gradient, the gradient of the loss
            divided by the number of training examples (the mean-loss gradient that
            Hugging Face's Trainer, and so the reference code of the baselines, clips at
            1.0); 0 disables. The loss itself is the dataset-scaled ELBO, so the threshold
            applied to its gradient is ``grad_clip * N``.
        kl_weight: 1.0 is the exact ELBO; anything else is reported as tempered.
        kl_warmup_ratio: share of steps over which the KL's weight rises linearly from 0
            to ``kl_weight`` (a KL annealing schedule that lets q move away from the prior
            early on; the objective is tempered until the warm-up ends); 0: none.
        seed: seeds the data order and every random draw.
        mixed_precision / grad_accumulation_steps: ``no``/``bf16``/``fp16`` autocast and
            micro-steps per optimizer step (same global batch); either one, or a multi-process
            launch, selects the accelerate trainer (``bslora_pyro.inference.distributed``).
        validate_every: every this many steps (and at the last) the NLL of the method's
            predictive on the validation split is logged as ``val_nll``; 0 never.
        early_stopping: at the end, restore the weights of the validated step with the
            lowest ``val_nll`` (needs ``validate_every`` and a validation split).
        patience: with early stopping, stop after this many validations without a new
            best; 0 trains every step.
    """

    steps: PositiveInt = 200
    batch_size: PositiveInt = 8
    lr_factors: NonNegativeFloat = 1e-4
    lr_gates: NonNegativeFloat = 1e-2
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: UnitFloat = 0.06
    num_particles: PositiveInt = 1
    per_example_masks: bool = False
    grad_clip: NonNegativeFloat = 1.0
    kl_weight: NonNegativeFloat = 1.0
    kl_warmup_ratio: UnitFloat = field(default=0.0, metadata={"omit_at_default": True})
    seed: Seed = 0
    mixed_precision: str = "no"
    grad_accumulation_steps: PositiveInt = 1
    validate_every: NonNegativeInt = 0
    early_stopping: bool = False
    patience: NonNegativeInt = 0

    def __post_init__(self) -> None:
        check_ranges(self, "train")
        if self.early_stopping and self.validate_every == 0:
            raise ValueError("train.early_stopping needs train.validate_every > 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(
                f"train.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def batch_indices(num_data: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The dataset positions of minibatch ``step``: a pure function of (seed, step).

    The index stream is the concatenation of seeded per-epoch permutations, so a resumed
    run sees exactly the batches the uninterrupted one would.
    """
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_data)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_data, generator=generator)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def linear_schedule(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, math.ceil(steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def kl_weight_at(config: TrainConfig, step: int) -> float:
    """The KL's weight at ``step``: ``kl_weight``, ramped up linearly from 0 over the first
    ``kl_warmup_ratio`` of the steps."""
    warmup = config.kl_warmup_ratio * config.steps
    if warmup <= 0:
        return config.kl_weight
    return config.kl_weight * min(1.0, (step + 1) / warmup)


def clip_threshold(config: TrainConfig, num_data: int) -> float:
    """The norm at which the gradient of the dataset-scaled loss is clipped: ``grad_clip``
    on the per-example scale, times ``num_data`` (``inf`` when clipping is off)."""
    return config.grad_clip * num_data if config.grad_clip > 0 else math.inf


def progress_fields(record: dict, variational: bool = True) -> dict[str, str]:
    """What the progress bar shows: the ELBO (``variational``: the method has latent
    variables) or else the loss, NLL per example, KL, expected active ranks."""
    objective = {"elbo": -record["loss"]} if variational else {"loss": record["loss"]}
    fields = {key: f"{value:.1f}" for key, value in objective.items()}
    fields["nll"] = f"{record['nll']:.3f}"
    if record.get("kl"):
        fields["kl"] = f"{record['kl']:.2f}"
    if "active_ranks" in record:
        fields["ranks"] = f"{record['active_ranks']:.1f}"
    if "val_nll" in record:
        fields["val_nll"] = f"{record['val_nll']:.3f}"
    return fields


def after_step(method, step: int, num_data: int, config: TrainConfig) -> None:
    """The method's own update after optimizer step ``step`` (0-based), when it has one
    (BLoB's separate KL step); see ``Method.after_step``."""
    hook = getattr(method, "after_step", None)
    if hook is not None:
        hook(step, num_data, config)


class SVITrainer:
    """Trains a method on a list of examples with a scorer-built batch per step.

    ``encode(examples) -> batch`` turns a list of examples into the method's batch (the
    scorer's ``encode``); batches are moved to ``device``.
    """

    def __init__(
        self,
        method,
        encode: Callable[[Sequence], object],
        config: TrainConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.method = method
        self.encode = encode
        self.config = config
        self.device = torch.device(device)
        self.elbo = ExactELBO(kl_weight=config.kl_weight)
        groups = method.param_groups(config.lr_factors, config.lr_gates, config.weight_decay)
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(config.steps, config.warmup_ratio)
        )
        self.step = 0
        self.history: list[dict] = []
        self.variational = True  # the method has latent sites (a KL term); set every step
        self.stop_requested = False  # set by an ``on_step`` hook to end training early

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def train_step(self, examples: Sequence) -> dict:
        """One SVI step on the minibatch chosen by (seed, step)."""
        config = self.config
        index = batch_indices(len(examples), config.batch_size, self.step, config.seed)
        batch = self.encode([examples[i] for i in index.tolist()])
        batch = batch.to(self.device) if hasattr(batch, "to") else batch
        self.method.set_progress(self.step / config.steps)
        self.elbo.kl_weight = kl_weight_at(config, self.step)
        started = time.perf_counter()
        terms = self.method.training_loss(
            batch,
            index.to(self.device),
            len(examples),
            num_draws=config.num_particles,
            per_example=config.per_example_masks,
            elbo=self.elbo,
        )
        if not torch.isfinite(terms.loss):
            raise TrainingError(
                f"loss is {terms.loss.item()} at step {self.step + 1} (nll={terms.nll.item()}, "
                f"kl={terms.kl.item()}); lower the learning rates or check the data"
            )
        self.variational = bool(terms.kl_by_site)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        max_norm = clip_threshold(config, len(examples))
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if not torch.isfinite(norm):
            raise TrainingError(
                f"gradient norm is {norm.item()} at step {self.step + 1}; lower the learning rates"
            )
        self.optimizer.step()
        self.scheduler.step()
        after_step(self.method, self.step, len(examples), config)
        record = {
            "step": self.step + 1,
            "loss": terms.loss.item(),
            "nll": terms.nll.item() / len(examples),
            "kl": terms.kl.item(),
            "seconds": time.perf_counter() - started,
            "grad_norm": norm.item() / len(examples),  # per example, the scale of grad_clip
            "clipped": bool(norm.item() > max_norm),
            **self.method.training_metrics(),
        }
        if self.elbo.kl_weight != 1.0:
            record["kl_weight"] = self.elbo.kl_weight  # a tempered objective at this step
        if terms.penalty.item():
            record["penalty"] = terms.penalty.item()  # the factors' negative log prior
        self.step += 1
        self.history.append(record)
        return record

    def fit(
        self,
        examples: Sequence,
        progress: bool = True,
        on_step: Callable[[SVITrainer, dict], None] | None = None,
    ) -> list[dict]:
        """Run the remaining steps; ``on_step`` is called after each (checkpoints, logs)."""
        from tqdm.auto import tqdm

        if not examples:
            raise ValueError("cannot train on an empty dataset")
        if isinstance(self.method, torch.nn.Module):
            self.method.train()
        bar = tqdm(
            total=self.config.steps,
            initial=self.step,
            disable=not progress,
            desc="SVI",
            dynamic_ncols=True,
        )
        while self.step < self.config.steps and not self.stop_requested:
            record = self.train_step(examples)
            if on_step is not None:
                on_step(self, record)
            bar.update(1)
            bar.set_postfix(progress_fields(record, self.variational))
        bar.close()
        return self.history
