"""``report.md`` and ``reliability.png`` of a run directory (what a person reads first)."""

from __future__ import annotations

from pathlib import Path

from bslora_pyro import metrics as M
from bslora_pyro.experiment import rundir
from bslora_pyro.persistence import atomic_write_text

#: markdown sections written by ``bslora analyze``; every later report keeps them
ANALYSIS_SECTIONS = "analysis.md"
COLUMNS = ("acc", "ece", "nll", "brier", "aurc", "ood_auroc_entropy", "ood_auroc_mi")


def plot_reliability(run_dir: Path) -> Path | None:
    """Reliability diagrams, one panel per evaluation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted((run_dir / rundir.PREDICTIONS).glob("*.jsonl"))
    sets = {path: rundir.read_predictions(path) for path in files}
    sets = {path: preds for path, preds in sets.items() if preds.labelled}  # OOD sets: none
    if not sets:
        return None
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 4), squeeze=False)
    for ax, (path, preds) in zip(axes[0], sets.items(), strict=True):
        bins = M.reliability_bins(preds.probs.numpy(), preds.labels.numpy())
        edges = bins["edges"]
        centers = (edges[:-1] + edges[1:]) / 2
        ax.bar(centers, bins["accuracy"], width=edges[1] - edges[0], alpha=0.7,
               edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ece = M.expected_calibration_error(preds.probs.numpy(), preds.labels.numpy())
        ax.set_title(f"{path.stem.replace('__', ':')}\nECE {ece:.3f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = run_dir / "reliability.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def metrics_table(metrics: dict) -> str:
    sets = [k for k in metrics if not k.startswith("_")]
    used = [c for c in COLUMNS if any(c in metrics[s] for s in sets)]
    lines = ["| set | n | " + " | ".join(used) + " |", "|---|---|" + "---|" * len(used)]
    for name in sets:
        row = metrics[name]
        cells = [f"{row[c]:.3f}" if c in row else "" for c in used]
        lines.append(f"| {name} | {row.get('n', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dir: Path, extra_sections: list[str] | None = None) -> Path:
    """Write ``report.md``: setup, metrics, training summary and links to the plots."""
    import yaml

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    metrics = rundir.read_metrics(run_dir)
    plot_reliability(run_dir)
    train_log = rundir.read_jsonl(run_dir / rundir.TRAIN_LOG)
    adapter = config["adapter"]
    lines = [
        f"# Run report: {config['name']} ({config['method']}, seed {config['seed']})",
        "",
        f"- model: `{config['model']['name']}`, scoring `{config['model']['scoring']}`",
        f"- adapter: r={adapter['r']}, alpha={adapter['alpha']}, targets "
        f"{adapter['target_modules']}, layers {adapter['layers'] or 'all'}",
        f"- method options: `{config['method_options']}`",
        f"- training: {config['data']['train']['task']}:{config['data']['train']['split']} "
        f"(limit {config['data']['train']['limit']}), {config['train']['steps']} steps of "
        f"{config['train']['batch_size']}, M = {config['predict']['num_samples']} at test",
    ]
    if adapter["layers"]:
        lines.append(f"- only blocks `{adapter['layers']}` are adapted (the lower blocks stay "
                     "frozen and unadapted to keep CPU runs short)")
    run = metrics.get("_run", {})
    if run:
        lines.append(f"- train time {run.get('train_seconds')} s on {run.get('train_examples')} "
                     "examples" + (f" ({run['run_seconds']} s for the whole run, evaluation "
                                   "included)" if "run_seconds" in run else "")
                     + (f"; expected active ranks {run['expected_active_ranks']:.1f}"
                        if "expected_active_ranks" in run else ""))
    if "early_stopping" in run:
        stops = run["early_stopping"]
        for k, stop in enumerate(stops.get("members", [stops])):
            who = f"member {k}: " if "members" in stops else ""
            lines.append(f"- early stopping: {who}weights of step {stop['best_step']} restored "
                         f"(validation NLL {stop['best_val_nll']:.3f}; {stop['steps_trained']} "
                         "steps trained)")
    validation = metrics.get("_validation")
    if validation:
        lines.append(f"- validation split ({validation['n']} questions held out of training): "
                     f"ACC {validation['acc']:.3f}, ECE {validation['ece']:.3f}, "
                     f"NLL {validation['nll']:.3f}")
    lines += ["", "## Metrics", "", metrics_table(metrics), "",
              "OOD AUROC columns score the shifted sets against the first (in-distribution) set.",
              ""]
    tempered = metrics.get(rundir.TEMPERED)
    if tempered:
        lines += [f"With the post-hoc temperature T = {tempered['temperature']:.3f} fitted on "
                  "the validation split (every draw's logits divided by T):", "",
                  metrics_table(tempered["sets"]), ""]
    lines += ["![reliability](reliability.png)", ""]
    if train_log:
        first, last = train_log[0], train_log[-1]
        lines += ["## Training", "",
                  f"loss (negative ELBO) {first['loss']:.1f} -> {last['loss']:.1f}; "
                  f"NLL per example {first['nll']:.3f} -> {last['nll']:.3f}; "
                  f"KL {first['kl']:.2f} -> {last['kl']:.2f}", ""]
    analysis = run_dir / ANALYSIS_SECTIONS
    if extra_sections is None and analysis.is_file():
        extra_sections = [analysis.read_text()]
    lines += extra_sections or []
    path = run_dir / rundir.REPORT
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
