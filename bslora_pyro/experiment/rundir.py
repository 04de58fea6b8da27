"""What a run directory holds, and how to read and write its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bslora_pyro.inference.predictive import NO_LABEL, LogitGaussian, Predictions
from bslora_pyro.persistence import atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
GATE_LOG = "gate_history.jsonl"
WEIGHTS = "weights"
PREDICTIONS = "predictions"
REPORT = "report.md"
VALIDATION_PREDICTIONS = "validation_predictions.jsonl"  # the held-out split's predictions
EARLY_STOPPING = "early_stopping"  # the best validated state (train.early_stopping)
TEMPERED = "_posthoc_temperature"  # metrics.json key: every set under the validation T
GATE_POSTERIOR = "gate_posterior.json"  # q(z_j = 1) and the prior's P(z_j = 1) per module


def safe_name(label: str) -> str:
    return label.replace(":", "__").replace("/", "_")


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _short(x) -> float | None:
    """A float to 8 significant digits (float32 precision); ``None`` for -inf."""
    x = float(x)
    return None if x == float("-inf") else float(f"{x:.8g}")


def _row(values, width: int) -> list:
    return [_short(v) for v in values[:width]]


def write_predictions(run_dir: Path, label: str, uids: list[str], preds: Predictions,
                      path: Path | None = None) -> Path:
    """One JSON line per example in ``predictions/<label>.jsonl`` (or ``path``): uid, label
    (``null`` when the set has none), the model average's probabilities (``probs``, to read)
    and log-probabilities (``log_probs``, exact), every kept draw's log-probabilities
    (``sample_log_probs``), and for a Gaussian predictive over logits its ``logit_mean`` and
    ``logit_cov`` (with the ``logit_draws`` and ``logit_seed`` of its average)."""
    folder = run_dir / PREDICTIONS
    folder.mkdir(parents=True, exist_ok=True)
    probs = preds.probs
    gaussian = preds.logit_gaussian
    lines = []
    for i, uid in enumerate(uids):
        width = int(preds.choice_mask[i].sum())
        label_i = int(preds.labels[i])
        row = {
            "uid": uid,
            "label": None if label_i == NO_LABEL else label_i,
            "probs": _row(probs[i], width),
            "log_probs": _row(preds.log_probs[i], width),
            "sample_log_probs": [_row(s[i], width) for s in preds.sample_log_probs],
        }
        if gaussian is not None:
            row["logit_mean"] = _row(gaussian.mean[i], width)
            row["logit_cov"] = [_row(c, width) for c in gaussian.covariance[i, :width]]
            row["logit_draws"], row["logit_seed"] = gaussian.draws, gaussian.seed
        lines.append(json.dumps(row))
    path = path or folder / f"{safe_name(label)}.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _log_row(values: list) -> torch.Tensor:
    return torch.tensor([-math.inf if v is None else v for v in values])


def read_predictions(path: Path) -> Predictions:
    """Rebuild :class:`Predictions` from a predictions file (missing choices padded with
    probability 0). Files written before log-probabilities were kept (``sample_probs``
    only) are read as the logs of their rounded probabilities."""
    rows = read_jsonl(path)
    width = max(len(r["probs"]) for r in rows)
    old = "sample_log_probs" not in rows[0]
    draws = len(rows[0]["sample_probs" if old else "sample_log_probs"])
    sample = torch.full((draws, len(rows), width), -math.inf)
    mean = torch.full((len(rows), width), -math.inf)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    gaussian = "logit_mean" in rows[0]
    logit_mean = torch.zeros(len(rows), width, dtype=torch.float64)
    logit_cov = torch.zeros(len(rows), width, width, dtype=torch.float64)
    for i, row in enumerate(rows):
        c = len(row["probs"])
        mask[i, :c] = True
        if old:
            sample[:, i, :c] = torch.tensor(row["sample_probs"]).log()
        else:
            sample[:, i, :c] = torch.stack([_log_row(s) for s in row["sample_log_probs"]])
            mean[i, :c] = _log_row(row["log_probs"])
        if gaussian:
            logit_mean[i, :c] = torch.tensor(row["logit_mean"], dtype=torch.float64)
            logit_cov[i, :c, :c] = torch.tensor(row["logit_cov"], dtype=torch.float64)
    labels = torch.tensor([NO_LABEL if r["label"] is None else r["label"] for r in rows])
    if old:
        return Predictions.from_sample_log_probs(sample, labels, mask)
    preds = Predictions(mean, sample, labels, mask)
    if gaussian:
        first = rows[0]
        preds.logit_gaussian = LogitGaussian(logit_mean, logit_cov, first["logit_draws"],
                                             first["logit_seed"])
    return preds


def write_gate_posterior(run_dir: Path, method) -> Path | None:
    """``gate_posterior.json``: the trained posterior's q(z_j = 1) and the prior's
    P(z_j = 1) per module (the first under an amortized guide is at the mean training
    input); ``None`` for a method without gates."""
    posterior = method.gate_probabilities()
    if posterior is None:
        return None
    prior = method.prior.prior_inclusion_probs()
    data = {"posterior": {m: [float(q) for q in p.flatten()] for m, p in posterior.items()},
            "prior": {m: [float(q) for q in prior[m].flatten()] for m in posterior}}
    path = run_dir / GATE_POSTERIOR
    atomic_write_text(path, json.dumps(data, indent=1))
    return path


def read_gate_posterior(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """The ``posterior`` and ``prior`` inclusion probabilities of a run with gates."""
    path = Path(run_dir) / GATE_POSTERIOR
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {GATE_POSTERIOR}: is it a finished run of "
                                "a method with gates (bslora)?")
    return json.loads(path.read_text())


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
