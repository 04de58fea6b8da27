"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's
tracking API: each training step's loss, NLL, KL, gate statistics and learning rates, and
the evaluation metrics at the end. Off unless ``tracking.log_with`` names a tracker."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_SKIPPED = ("step", "member")  # record fields that are not curves


class TrackingError(ValueError):
    """A tracker that cannot be used (unknown, or its package is not installed)."""


@dataclass
class TrackingConfig:
    """Where a run's curves go.

    ``log_with``: ``tensorboard`` (event files, no account or network), ``wandb``,
    ``mlflow``, or a list of them; ``null`` (default) tracks nothing. ``dir``: a folder for
    TensorBoard and wandb files shared by runs (each run in ``<dir>/<name>/<method>/seed<k>``);
    default ``<run dir>/tracking``. ``project``: the wandb project or MLflow experiment
    (default: the config's ``name``). ``init_kwargs``: extra arguments per tracker, e.g.
    ``{wandb: {mode: offline}}``.
    """

    log_with: str | list[str] | None = None
    dir: str | None = None
    project: str | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.trackers():
            if name not in TRACKERS:
                close = difflib.get_close_matches(str(name), TRACKERS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"log_with: unknown tracker {name!r}{hint}; "
                                 f"choose from {', '.join(TRACKERS)}")
        for name, kwargs in self.init_kwargs.items():
            if name not in self.trackers() or not isinstance(kwargs, dict):
                raise ValueError(f"init_kwargs.{name} must be a mapping for a tracker in log_with")

    def trackers(self) -> list[str]:
        if self.log_with is None:
            return []
        return [self.log_with] if isinstance(self.log_with, str) else list(self.log_with)


def _check_installed(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(_PACKAGES[name]) is None:
        extra = " (pip install 'bslora-pyro[tracking]')" if name == "tensorboard" else ""
        raise TrackingError(f"tracking.log_with: {name} needs the {_PACKAGES[name]} package, "
                            f"which is not installed{extra}")


def _tag(text: str) -> str:
    """A metric name every tracker accepts (MLflow allows letters, digits, _ - . / space)."""
    return re.sub(r"[^\w\-./ ]", "_", text)


def _flat_hparams(data: dict, prefix: str = "") -> dict[str, Any]:
    """The config as flat ``a.b`` keys with scalar values (lists and null as text)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _learning_rates(trainer) -> dict[str, float]:
    """The learning rate each parameter group used in the step just taken."""
    scheduler = getattr(trainer.scheduler, "scheduler", trainer.scheduler)  # accelerate wraps it
    lambdas = getattr(scheduler, "lr_lambdas", None)
    rates = {}
    for i, group in enumerate(trainer.optimizer.param_groups):
        lr = group["lr"]
        if lambdas is not None and "initial_lr" in group:
            lr = group["initial_lr"] * lambdas[i](trainer.step - 1)
        rates[f"lr_{group.get('name', i)}"] = float(lr)
    return rates


class RunTracker:
    """The trackers of one run. They start at the first log, so that an accelerate trainer
    has set up the process state before any tracker asks for it."""

    def __init__(self, trackers: list, hparams: dict[str, Any]) -> None:
        self._trackers = trackers
        self._hparams = hparams
        self._started = False

    def _start(self) -> None:
        if not self._started:
            for tracker in self._trackers:
                tracker.start()
                tracker.store_init_configuration(self._hparams)
            self._started = True

    def log(self, values: dict[str, float], step: int) -> None:
        self._start()
        for tracker in self._trackers:
            tracker.log(values, step=step)

    def log_step(self, trainer, record: dict) -> None:
        """One training record (loss, nll, kl, active_ranks, tau, val_nll, ...) and the
        learning rates, under ``train/`` (``train/member<k>/`` for ensemble members)."""
        values = {k: float(v) for k, v in record.items()
                  if k not in _SKIPPED and isinstance(v, int | float) and not isinstance(v, bool)}
        values.update(_learning_rates(trainer))
        member = record.get("member")
        prefix = "train/" if member is None else f"train/member{member}/"
        self.log({_tag(prefix + k): v for k, v in values.items()}, step=int(record["step"]))

    def log_metrics(self, results: dict, step: int) -> None:
        """Every evaluation set's metrics as ``eval/<set>/<metric>``; the validation
        split's as ``validation/<metric>``; the run summary as ``run/<key>``."""
        values = {}
        for label, metrics in results.items():
            if not isinstance(metrics, dict):
                continue
            if label == "_validation":
                prefix = "validation/"
            elif label == "_run":
                prefix = "run/"
            elif label.startswith("_"):
                continue
            else:
                prefix = f"eval/{label}/"
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[_tag(prefix + key)] = float(value)
        if values:
            self.log(values, step=step)

    def finish(self) -> None:
        if self._started:
            for tracker in self._trackers:
                tracker.finish()


def start_tracking(config, run_dir: Path) -> RunTracker | None:
    """The run's trackers from ``config.tracking`` (``None`` when it names none); a tracker
    whose package is missing is a one-line :class:`TrackingError` before any training."""
    settings: TrackingConfig = config.tracking
    names = settings.trackers()
    if not names:
        return None
    for name in names:
        _check_installed(name)
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run_name = f"{config.name}/{config.method}/seed{config.seed}"
    root = Path(settings.dir) if settings.dir else Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    project = settings.project or config.name
    trackers = []
    for name in names:
        kwargs = dict(settings.init_kwargs.get(name, {}))
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(run_name if settings.dir else "tracking", root,
                                               **kwargs))
        elif name == "wandb":
            kwargs = {"name": run_name, "dir": str(root), **kwargs}
            trackers.append(WandBTracker(project, **kwargs))
        else:
            kwargs = {"run_name": run_name, "logging_dir": settings.dir, **kwargs}
            trackers.append(MLflowTracker(project, **kwargs))
    return RunTracker(trackers, _flat_hparams(config.to_dict()))
