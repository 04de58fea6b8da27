"""Calibration and uncertainty metrics on predicted class probabilities.

Inputs are ``probs`` of shape [N, C] whose rows sum to one and integer ``labels`` of shape [N];
numpy arrays, torch tensors and nested lists are all accepted. Results are fractions (not
percentages) returned as Python floats, or numpy arrays for per-example quantities.

Nothing is clipped: the negative log-likelihood is exact (infinite for a probability of
exactly 0); give it log-probabilities (:func:`nll_from_log_probs`, ``summarize(...,
log_probs=...)``) where a probability may underflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``probs`` [N, C] (float) and ``labels`` [N] (int) arrays."""
    p = _as_numpy(probs)
    y = _as_numpy(labels, np.int64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape [{p.shape[0]}], got {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("need at least one example")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}]")
    return p, y


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose arg-max class is the label."""
    p, y = _check(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability diagram data on ``n_bins`` equal-width bins of (0, 1].

    Bin ``k`` holds confidences in ``(k / n_bins, (k + 1) / n_bins]``. Returns ``edges``
    [n_bins + 1] and per bin the mean ``confidence``, ``accuracy`` (NaN for empty bins) and
    ``count``.
    """
    p, y = _check(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (count / N) * |accuracy - mean confidence| (L1)."""
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(weights * gaps))


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean of ``-log p[label]``, exact (``inf`` when a label has probability 0)."""
    p, y = _check(probs, labels)
    with np.errstate(divide="ignore"):
        return float(np.mean(-np.log(p[np.arange(len(y)), y])))


def nll_from_log_probs(log_probs: Any, labels: Any) -> float:
    """Mean of ``-log_probs[label]``: the exact NLL for any gap (no underflow)."""
    lp = _as_numpy(log_probs)
    y = _as_numpy(labels, np.int64)
    if lp.ndim != 2 or y.shape != (lp.shape[0],):
        raise ValueError(f"log_probs must be [N, C] and labels [N], got {lp.shape}, {y.shape}")
    return float(np.mean(-lp[np.arange(len(y)), y]))


def brier_score(probs: Any, labels: Any) -> float:
    """Mean over examples of the squared distance between ``probs`` and the one-hot label."""
    p, y = _check(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) along the last axis, with 0 log 0 = 0 (exactly, nothing clipped)."""
    positive = p > 0
    terms = np.where(positive, p * np.log(np.where(positive, p, 1.0)), 0.0)
    return -np.sum(terms, axis=-1)


def predictive_entropy(probs: Any) -> np.ndarray:
    """Per-example entropy (nats) of ``probs`` [N, C]; returns shape [N]."""
    p = _as_numpy(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {p.shape}")
    return _entropy(p)


def mutual_information(sample_probs: Any) -> np.ndarray:
    """Per-example epistemic uncertainty from ``sample_probs`` [M, N, C] (M posterior samples).

    Entropy of the mean prediction minus the mean entropy of the samples; shape [N], >= 0.
    """
    s = _as_numpy(sample_probs)
    if s.ndim != 3:
        raise ValueError(f"sample_probs must have shape [M, N, C], got {s.shape}")
    mi = _entropy(s.mean(axis=0)) - _entropy(s).mean(axis=0)
    return np.maximum(mi, 0.0)  # remove tiny negative round-off


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse]


def auroc(scores_in: Any, scores_out: Any) -> float:
    """P(an OOD score > an in-distribution score), ties counting 1/2 (Mann-Whitney U)."""
    s_in = _as_numpy(scores_in).ravel()
    s_out = _as_numpy(scores_out).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("both score sets must be non-empty")
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    rank_sum_out = ranks[s_in.size :].sum()
    u_out = rank_sum_out - s_out.size * (s_out.size + 1) / 2.0
    return float(u_out / (s_in.size * s_out.size))


def fpr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> float:
    """OOD detection: the share of in-distribution examples flagged (score >= t) at the
    highest threshold t that flags at least ``tpr`` of the out-of-distribution ones."""
    s_in = _as_numpy(scores_in).ravel()
    s_out = np.sort(_as_numpy(scores_out).ravel())[::-1]
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("both score sets must be non-empty")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    threshold = s_out[int(np.ceil(tpr * s_out.size)) - 1]
    return float(np.mean(s_in >= threshold))


def risk_coverage_curve(
    probs: Any, labels: Any, confidence: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Selective prediction curve, keeping the most confident examples first.

    ``confidence`` [N] defaults to the top-label probability. Examples of equal confidence
    are kept in an order that is averaged over (the expected risk under a random order
    among ties), so the curve does not depend on the dataset's order. Returns
    ``coverages`` k / N and ``risks`` (error rate among the k kept) for k = 1..N.
    """
    p, y = _check(probs, labels)
    conf = p.max(axis=1) if confidence is None else _as_numpy(confidence).ravel()
    if conf.shape != y.shape:
        raise ValueError(f"confidence must have shape {y.shape}, got {conf.shape}")
    order = np.argsort(-conf, kind="stable")
    errors = (p.argmax(axis=1) != y)[order].astype(np.float64)
    _, group, counts = np.unique(-conf[order], return_inverse=True, return_counts=True)
    errors = (np.bincount(group, weights=errors) / counts)[group]  # each tie: its mean
    kept = np.arange(1, len(y) + 1)
    return kept / len(y), np.cumsum(errors) / kept


def area_under_risk_coverage(probs: Any, labels: Any, confidence: Any | None = None) -> float:
    """AURC: the mean selective risk over the N coverage levels of :func:`risk_coverage_curve`."""
    _, risks = risk_coverage_curve(probs, labels, confidence)
    return float(np.mean(risks))


def summarize(
    probs: Any, labels: Any, n_bins: int = 15, log_probs: Any | None = None
) -> dict[str, float | int]:
    """The benchmark's headline metrics: ``acc``, ``ece``, ``nll``, ``brier`` and ``n``;
    the NLL from ``log_probs`` [N, C] when given (exact where probabilities underflow)."""
    p, y = _check(probs, labels)
    nll = negative_log_likelihood(p, y) if log_probs is None else nll_from_log_probs(log_probs, y)
    return {
        "acc": accuracy(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
        "nll": nll,
        "brier": brier_score(p, y),
        "n": int(len(y)),
    }
