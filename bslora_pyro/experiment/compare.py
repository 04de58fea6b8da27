"""Side-by-side tables of runs: mean +- std over seeds of runs that share a setting."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.rundir import TEMPERED

METRICS = ("acc", "ece", "nll", "brier", "ood_auroc_entropy", "ood_auroc_mi")
#: OOD scores by mutual information: none for a predictive of one draw
MI_OOD = ("ood_auroc_mi", "ood_fpr95_mi")
LOWER_IS_BETTER = {"ece", "nll", "brier", "aurc", "ood_fpr95_entropy", "ood_fpr95_mi",
                   "mean_mutual_information"}


def single_draw(set_metrics: dict) -> bool:
    """Whether a set was predicted with one draw: its MI is 0 on every input, so MI-based
    OOD scores rank nothing (runs made before ``set_metrics`` left them out still hold them)."""
    return set_metrics.get("num_samples") == 1


#: what a method's label adds, from its options, so a table says which variant it shows
QUALIFIERS = {
    "laplace": lambda options: {"kron": "K-FAC"}.get(options.get("hessian"), "diagonal GGN"),
}


def setting_of(run_dir: Path) -> str:
    """A run's setting label: its method (with the qualifier some methods' options give,
    e.g. Laplace's Hessian), prefixed by the run name unless that is generic."""
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    name, method = config["name"], config["method"]
    label = method if name in ("experiment", method) else f"{name}/{method}"
    qualifier = QUALIFIERS.get(method)
    return f"{label} ({qualifier(config.get('method_options') or {})})" if qualifier else label


#: the row suffix of a run's predictive under its post-hoc validation temperature
TEMPERED_SUFFIX = " + T"


def collect(run_dirs: list[Path]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """setting -> eval set -> metric -> values over seeds. A run with a post-hoc
    temperature (``predict.posthoc_temperature``) also fills the row ``<setting> + T``."""
    table: dict = {}
    for run in run_dirs:
        run = Path(run)
        if not (run / rundir.METRICS).is_file():
            raise FileNotFoundError(f"{run} has no {rundir.METRICS}: is it a finished run?")
        metrics = rundir.read_metrics(run)
        rows = [(setting_of(run), metrics)]
        tempered = metrics.get(TEMPERED)
        if tempered:
            rows.append((setting_of(run) + TEMPERED_SUFFIX, tempered["sets"]))
        for label, sets in rows:
            setting = table.setdefault(label, {})
            for name, values in sets.items():
                if name.startswith("_"):
                    continue
                cell = setting.setdefault(name, {})
                for metric, value in values.items():
                    if metric in MI_OOD and single_draw(values):
                        continue
                    if isinstance(value, (int, float)):
                        cell.setdefault(metric, []).append(float(value))
    return table


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) > 1:
        return f"{mean:.3f} ± {statistics.stdev(values):.3f}"
    return f"{mean:.3f}"


def compare_tables(run_dirs: list[Path], metrics=METRICS) -> tuple[str, str]:
    """(markdown, csv): rows = settings in the order given, columns = eval set (in the
    config's order: in-distribution first) x metric, where any run has it (an unlabelled
    OOD set has only its OOD scores); best per column in bold (highest accuracy and
    AUROC, lowest of the others)."""
    table = collect(run_dirs)
    sets = list(dict.fromkeys(s for setting in table.values() for s in setting))  # config order
    columns = [(s, m) for s in sets for m in metrics
               if any(m in setting.get(s, {}) for setting in table.values())]
    best = {}
    for column in columns:
        means = {name: statistics.fmean(v[column[0]][column[1]]) for name, v in table.items()
                 if column[0] in v and column[1] in v[column[0]]}
        if means:
            pick = min if column[1] in LOWER_IS_BETTER else max
            best[column] = pick(means, key=means.get)
    header = "| method | " + " | ".join(f"{s} {m}" for s, m in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["setting", "set", "metric", "mean", "std", "n_seeds"])
    for name, sets_ in table.items():
        cells = []
        for column in columns:
            values = sets_.get(column[0], {}).get(column[1])
            if not values:
                cells.append("")
                continue
            text = _fmt(values)
            cells.append(f"**{text}**" if best.get(column) == name else text)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            writer.writerow([name, column[0], column[1], statistics.fmean(values), std,
                             len(values)])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), out.getvalue()
