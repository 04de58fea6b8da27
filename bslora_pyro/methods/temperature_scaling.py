"""Temperature scaling: one temperature T on top of MLE logits, fitted post hoc.

The training set is split once, by a seeded permutation, into a part the LoRA trains on
and a held-out calibration part (``holdout_fraction``). The method's ``fit(train, encode,
config, ...)`` hook trains on ``split_training(train)[0]`` only (a runner that drives its
own trainer must do the same); ``fit_posthoc(train, encode)`` then fits ``log T`` by LBFGS
on the NLL of the held-out part; the evaluation set is never seen. Predictions are the
MLE logits divided by T (``[1, B, C]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bslora_pyro.data.validation import split_validation
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.scoring import masked_fill_value
from bslora_pyro.typed import OpenUnitFloat, Seed

NAME = "temperature_scaling"


@dataclass
class TemperatureScalingOptions(MethodOptions):
    """``holdout_fraction`` of the training set in (0, 1) (default 0.1), ``split_seed``
    (default 0)."""

    holdout_fraction: OpenUnitFloat = 0.1
    split_seed: Seed = 0


OPTIONS = TemperatureScalingOptions


class TemperatureScaledLora(PlainLora):
    trains_itself = True

    def __init__(self, backbone, scorer, adapter, holdout_fraction: float, split_seed: int):
        super().__init__(backbone, scorer, adapter, name=NAME)
        self.holdout_fraction = holdout_fraction
        self.split_seed = split_seed
        self.register_buffer("temperature", torch.ones(1))
        self.calibration_uids: list[str] = []

    def split_training(self, examples: Sequence) -> tuple[list, list]:
        """``(train_part, holdout_part)`` of the training examples, in their order."""
        if len(examples) < 2:
            raise ValueError(
                f"temperature_scaling needs at least 2 training examples, got {len(examples)}"
            )
        return split_validation(examples, self.holdout_fraction, self.split_seed)

    def fit(self, examples: Sequence, encode: Callable[[Sequence], object], config,
            progress: bool = True, on_step: Callable | None = None,
            device: torch.device | str | None = None) -> list:
        """Train the LoRA on the non-held-out part of ``examples`` (one SVITrainer)."""
        train, _ = self.split_training(examples)
        device = device or self.adapters[next(iter(self.adapters))].lora_A.device
        return super().fit(train, encode, config, progress, on_step, device)

    @torch.no_grad()
    def _holdout_logits(self, examples: Sequence, encode: Callable, batch_size: int = 8):
        self.eval()
        logits, labels, masks = [], [], []
        for start in range(0, len(examples), batch_size):
            batch = encode(list(examples[start : start + batch_size]))
            logits.append(super().predict_logits(batch, 1, True)[0].float().cpu())
            labels.append(batch.labels.cpu())
            masks.append(batch.choice_mask.cpu())
        width = max(t.shape[-1] for t in logits)
        pad = masked_fill_value()
        logits = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=pad) for t in logits]
        masks = [torch.nn.functional.pad(m, (0, width - m.shape[-1]), value=False) for m in masks]
        return torch.cat(logits), torch.cat(labels), torch.cat(masks)

    def fit_posthoc(self, examples: Sequence, encode: Callable[[Sequence], object]) -> dict:
        """Fit T on the held-out part of the training ``examples`` (LBFGS on the NLL)."""
        _, holdout = self.split_training(examples)
        logits, labels, mask = self._holdout_logits(holdout, encode)
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(scale(logits, mask, log_t.exp()), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            self.temperature.fill_(float(log_t.exp()))
        self.calibration_uids = [ex.uid for ex in holdout]
        nll = torch.nn.functional.cross_entropy(scale(logits, mask, self.temperature), labels)
        return {
            "temperature": float(self.temperature),
            "holdout_nll": float(nll),
            "holdout_size": len(holdout),
        }

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        logits = super().predict_logits(batch, 1, True)
        mask = batch.choice_mask.to(logits.device)
        return scale(logits, mask, self.temperature.to(logits.device))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "temperature": self.temperature}

    def state_extra(self) -> dict:
        return {"calibration_uids": list(self.calibration_uids)}

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        super().load_state(tensors, extra)
        self.calibration_uids = list(extra.get("calibration_uids", []))


def scale(logits: torch.Tensor, mask: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``logits / T`` with missing choices kept at the finite fill value."""
    real = torch.where(mask, logits, torch.zeros_like(logits)) / temperature
    return torch.where(mask, real, torch.full_like(logits, masked_fill_value()))


def build(backbone, scorer, adapter, options: dict) -> TemperatureScaledLora:
    """Options: see :class:`TemperatureScalingOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    method = TemperatureScaledLora(backbone, scorer, adapter, opts.holdout_fraction,
                                   opts.split_seed)
    method.options = {"holdout_fraction": opts.holdout_fraction, "split_seed": opts.split_seed}
    return method


def load(directory: str | Path, backbone, scorer) -> TemperatureScaledLora:
    return load_method(NAME, build, directory, backbone, scorer)
