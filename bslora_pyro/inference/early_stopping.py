"""Validation during training and early stopping on the validation NLL.

:class:`ValidationMonitor` is an ``on_step`` hook of :class:`~bslora_pyro.inference.svi.
SVITrainer`: every ``validate_every`` steps (and at the last step) it scores the validation
split with the method's own predictive, adds ``val_nll`` to the step's record, and with
early stopping keeps a copy of the trainable tensors of the best step so far, which
:meth:`ValidationMonitor.restore_best` puts back at the end. The copy is also written to
``<run>/early_stopping/`` (safetensors + JSON, atomically) so a resumed run keeps it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from bslora_pyro.persistence import atomic_save_tensors, atomic_write_text

BEST_TENSORS = "best.safetensors"
BEST_STATE = "best.json"


class ValidationMonitor:
    """Validate every ``every`` steps; with ``early_stopping`` track and restore the best.

    Args:
        validate: returns the validation NLL of the method as it is now. It is called
            under a forked RNG, so validating does not change the training draws.
        every: validate every this many steps (and at the trainer's last step).
        early_stopping: keep the best step's trainable tensors for :meth:`restore_best`.
        patience: request a stop after this many validations without a new best (0 never).
        folder: where the best state is persisted (``None``: memory only).
    """

    def __init__(
        self,
        validate: Callable[[], float],
        every: int,
        early_stopping: bool = False,
        patience: int = 0,
        folder: str | Path | None = None,
    ) -> None:
        self.validate = validate
        self.every = every
        self.early_stopping = early_stopping
        self.patience = patience
        self.folder = Path(folder) if folder is not None else None
        self.best_nll = math.inf
        self.best_step = 0
        self.best_state: list[torch.Tensor] | None = None
        self.since_best = 0

    def __call__(self, trainer, record: dict) -> None:
        step = trainer.step
        if not (step % self.every == 0 or step == trainer.config.steps):
            return
        training = getattr(trainer.method, "training", False)
        with torch.random.fork_rng(devices=[]):
            nll = float(self.validate())
        if training:
            trainer.method.train()  # prediction switched the method to eval mode
        record["val_nll"] = nll
        if not self.early_stopping:
            return
        if nll < self.best_nll:
            self.best_nll, self.best_step, self.since_best = nll, step, 0
            self.best_state = [p.detach().clone() for p in trainer.parameters()]
            self._save()
        else:
            self.since_best += 1
            if self.patience and self.since_best >= self.patience:
                trainer.stop_requested = True

    def restore_best(self, trainer) -> dict:
        """Put the best step's tensors back into the trainer's parameters; returns a
        summary (best step, its validation NLL, the steps trained)."""
        if self.best_state is None:
            raise RuntimeError("early stopping has no validated step to restore")
        params = trainer.parameters()
        with torch.no_grad():
            for p, saved in zip(params, self.best_state, strict=True):
                p.copy_(saved)
        return {"best_step": self.best_step, "best_val_nll": self.best_nll,
                "steps_trained": trainer.step}

    # --- persistence (resume) -----------------------------------------------------------
    def _save(self) -> None:
        if self.folder is None or self.best_state is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"param/{i}": t for i, t in enumerate(self.best_state)}
        atomic_save_tensors(tensors, self.folder / BEST_TENSORS)
        atomic_write_text(self.folder / BEST_STATE, json.dumps(
            {"best_step": self.best_step, "best_val_nll": self.best_nll}))

    def load(self, trainer) -> None:
        """Read a persisted best state (a resumed run), counting validations since it
        from the trainer's history."""
        if self.folder is None or not (self.folder / BEST_STATE).is_file():
            return
        meta = json.loads((self.folder / BEST_STATE).read_text())
        if int(meta["best_step"]) > trainer.step:  # after the checkpoint: found again
            return
        tensors = load_file(str(self.folder / BEST_TENSORS))
        self.best_state = [tensors[f"param/{i}"] for i in range(len(tensors))]
        self.best_step, self.best_nll = int(meta["best_step"]), float(meta["best_val_nll"])
        self.since_best = sum(1 for r in trainer.history
                              if "val_nll" in r and r["step"] > self.best_step)
