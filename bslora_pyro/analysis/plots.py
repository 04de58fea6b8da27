"""Figures of a run: q(z=1) heatmaps, training dynamics, risk-coverage and uncertainty.

Every function returns a matplotlib ``Figure`` drawn on an Agg canvas without pyplot (no
global state, no display needed; a notebook shows the returned figure), or ``None`` when
the run has nothing to draw. :func:`save_figure` writes a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bslora_pyro import metrics as M
from bslora_pyro.analysis.inference_data import split_path
from bslora_pyro.experiment import rundir
from bslora_pyro.inference.predictive import Predictions


def new_figure(ncols: int, width: float = 4.0, height: float = 3.5, **kwargs):
    """A constrained-layout figure on an Agg canvas with one row of ``ncols`` axes."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False, **kwargs)[0]


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Save as PNG through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    return path


def load_prediction_sets(run_dir: Path, labels: list[str]) -> dict[str, Predictions]:
    """Predictions per evaluation set: the config's sets in order (in-distribution first),
    then any other set evaluated later."""
    folder = Path(run_dir) / rundir.PREDICTIONS
    files = {p.stem: p for p in sorted(folder.glob("*.jsonl"))}
    order = [rundir.safe_name(label) for label in labels if rundir.safe_name(label) in files]
    order += [stem for stem in files if stem not in order]
    return {stem.replace("__", ":"): rundir.read_predictions(files[stem]) for stem in order}


def _heatmap_panels(idata) -> list[tuple[str, np.ndarray, list[str]]]:
    const = idata.constant_data
    panels = []
    if "inclusion_prob" in const:
        q = const["inclusion_prob"]
        layers = [str(layer) for layer in q.layer.values]
        for kind in q.module_type.values:
            panels.append((str(kind), q.sel(module_type=kind).values, layers))
    for name in map(str, const.data_vars):
        if name.startswith("inclusion_prob_"):
            panels.append((name[len("inclusion_prob_") :], const[name].values[None, :], ["-"]))
    return panels


def plot_gate_heatmap(idata) -> Figure:
    """q(z=1) over layer x rank, one panel per module type (and per module outside blocks)."""
    panels = _heatmap_panels(idata)
    rows = max(values.shape[0] for _, values, _ in panels)
    fig, axes = new_figure(len(panels), width=3.5, height=1.6 + 0.3 * rows)
    for ax, (title, values, layers) in zip(axes, panels, strict=True):
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                          origin="lower", interpolation="nearest")
        ax.set_title(f"q(z=1): {title}", fontsize=9)
        ax.set_xlabel("rank")
        ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(len(layers)), layers)
        if values.size <= 128:
            for (i, j), v in np.ndenumerate(values):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=list(axes), shrink=0.9, label="q(z=1)")
    return fig


def _module_kind(path: str) -> str:
    split = split_path(path)
    return path if split is None else split[2]


def plot_active_ranks(train_log: list[dict], gate_history: list[dict]) -> Figure | None:
    """Expected active ranks over training: the total (every step) and per module type."""
    steps = [r["step"] for r in train_log if "active_ranks" in r]
    if not steps and not gate_history:
        return None
    fig, (total, per_kind) = new_figure(2, width=4.5)
    if steps:
        total.plot(steps, [r["active_ranks"] for r in train_log if "active_ranks" in r])
    total.set(title="expected active ranks (all modules)", xlabel="step", ylabel="sum of q(z=1)")
    kinds: dict[str, list[float]] = {}
    for record in gate_history:
        sums: dict[str, float] = {}
        for path, probs in record["probs"].items():
            sums[_module_kind(path)] = sums.get(_module_kind(path), 0.0) + sum(probs)
        for kind, value in sums.items():
            kinds.setdefault(kind, []).append(value)
    history_steps = [r["step"] for r in gate_history]
    for kind, values in kinds.items():
        per_kind.plot(history_steps, values, marker="o", markersize=3, label=kind)
    per_kind.set(title="per module type (summed over layers)", xlabel="step",
                 ylabel="sum of q(z=1)")
    if kinds:
        per_kind.legend(fontsize=8)
    return fig


def plot_training(train_log: list[dict]) -> Figure | None:
    """Negative ELBO, expected NLL and KL(q || p) per step."""
    if not train_log:
        return None
    keys = [k for k in ("loss", "nll", "kl") if k in train_log[0]]
    titles = {"loss": "negative ELBO", "nll": "NLL per example", "kl": "KL(q || p)"}
    fig, axes = new_figure(len(keys), width=3.5)
    steps = [r["step"] for r in train_log]
    for ax, key in zip(axes, keys, strict=True):
        ax.plot(steps, [r.get(key, np.nan) for r in train_log])
        ax.set(title=titles[key], xlabel="step")
    return fig


def plot_risk_coverage(sets: dict[str, Predictions]) -> Figure | None:
    """Selective risk against coverage (most confident first), one curve per labelled set."""
    sets = {label: preds for label, preds in sets.items() if preds.labelled}
    if not sets:
        return None
    fig, (ax,) = new_figure(1, width=5.0)
    for label, preds in sets.items():
        probs, labels = preds.probs.numpy(), preds.labels.numpy()
        coverage, risk = M.risk_coverage_curve(probs, labels)
        aurc = M.area_under_risk_coverage(probs, labels)
        ax.plot(coverage, risk, label=f"{label} (AURC {aurc:.3f})")
    ax.set(title="risk-coverage", xlabel="coverage", ylabel="selective risk (error rate)",
           xlim=(0, 1), ylim=(0, None))
    ax.legend(fontsize=8)
    return fig


def plot_uncertainty(sets: dict[str, Predictions]) -> Figure | None:
    """Histograms of predictive entropy and mutual information, in-distribution vs shifted."""
    if not sets:
        return None
    scores = {
        "predictive entropy (nats)": {
            k: M.predictive_entropy(p.probs.numpy()) for k, p in sets.items()},
        "mutual information (nats)": {
            k: M.mutual_information(p.sample_probs.numpy()) for k, p in sets.items()},
    }
    fig, axes = new_figure(2, width=4.5)
    for ax, (title, by_set) in zip(axes, scores.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate(list(by_set.values())), bins=20)
        for i, (label, values) in enumerate(by_set.items()):
            kind = "in-distribution" if i == 0 else "shifted"
            ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{label} ({kind})")
        ax.set(title=title, xlabel="nats", ylabel="density")
        ax.legend(fontsize=8)
    return fig
