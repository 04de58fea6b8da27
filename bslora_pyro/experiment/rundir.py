"""What a run directory holds, and how to read and write its files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bslora_pyro.inference.predictive import Predictions
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


def safe_name(label: str) -> str:
    return label.replace(":", "__").replace("/", "_")


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _short(p) -> float:
    """A probability to 8 significant digits (exact enough to recompute log losses)."""
    return float(f"{float(p):.8g}")


def write_predictions(run_dir: Path, label: str, uids: list[str], preds: Predictions,
                      path: Path | None = None) -> Path:
    """One JSON line per example: uid, label, mean probabilities and every draw's, in
    ``predictions/<label>.jsonl`` (or ``path``)."""
    folder = run_dir / PREDICTIONS
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, uid in enumerate(uids):
        width = int(preds.choice_mask[i].sum())
        lines.append(json.dumps({
            "uid": uid,
            "label": int(preds.labels[i]),
            "probs": [_short(p) for p in preds.probs[i, :width]],
            "sample_probs": [[_short(p) for p in s[i, :width]] for s in preds.sample_probs],
        }))
    path = path or folder / f"{safe_name(label)}.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_predictions(path: Path) -> Predictions:
    """Rebuild :class:`Predictions` from a predictions file (choices padded with 0)."""
    rows = read_jsonl(path)
    width = max(len(r["probs"]) for r in rows)
    draws = len(rows[0]["sample_probs"])
    sample = torch.zeros(draws, len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        c = len(row["probs"])
        sample[:, i, :c] = torch.tensor(row["sample_probs"])
        mask[i, :c] = True
    labels = torch.tensor([r["label"] for r in rows])
    return Predictions(sample.mean(0), sample, labels, mask)


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
