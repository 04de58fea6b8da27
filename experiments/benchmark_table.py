"""Tables of a benchmark's finished runs (``<out>/<variant>/seed<k>``), mean ± std over seeds:
the in-distribution set with the validation numbers every choice is made on and the "+ T"
columns, the mechanism measures (training NLL, mutual information, active ranks), and
every out-of-distribution set by OOD detection.

    python experiments/benchmark_table.py runs/sentiment --out runs/sentiment/tables.md

Rows follow the variants file's order when ``--variants`` is given, else folder order.
``--pairs`` adds the learned-vs-matched-random table: ``learned:control`` variant pairs,
the difference per seed (learned minus control) and its mean ± std.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.compare import MI_OOD, single_draw

TRAIN_TAIL = 25  # training NLL: the mean over the last steps
ID_COLUMNS = [("val NLL", "_validation", "nll"), ("ACC", None, "acc"), ("ECE", None, "ece"),
              ("NLL", None, "nll"), ("Brier", None, "brier"), ("AURC", None, "aurc"),
              ("MI", None, "mean_mutual_information"), ("+T ECE", "T", "ece"),
              ("+T NLL", "T", "nll")]
OOD_COLUMNS = [("AUROC MI", "ood_auroc_mi"), ("AUROC entropy", "ood_auroc_entropy"),
               ("FPR95 MI", "ood_fpr95_mi"), ("FPR95 entropy", "ood_fpr95_entropy")]


def _train_nll(run: Path) -> float:
    rows = [r for r in rundir.read_jsonl(run / rundir.TRAIN_LOG) if "nll" in r][-TRAIN_TAIL:]
    return statistics.fmean(r["nll"] for r in rows) if rows else math.nan


def run_values(run: Path) -> dict[str, float]:
    """Every number the tables show, for one finished run."""
    metrics = rundir.read_metrics(run)
    sets = [k for k in metrics if not k.startswith("_")]
    first, tempered = sets[0], metrics.get(rundir.TEMPERED, {}).get("sets", {})
    out: dict[str, float] = {}
    for header, source, key in ID_COLUMNS:
        if source == "_validation":
            value = metrics.get("_validation", {}).get(key, math.nan)
        elif source == "T":
            value = tempered.get(first, {}).get(key, math.nan)
        else:
            value = metrics[first].get(key, math.nan)
        out[header] = value
    out["train NLL"] = _train_nll(run)
    out["T"] = metrics.get(rundir.TEMPERED, {}).get("temperature") or math.nan
    out["active ranks"] = metrics["_run"].get("expected_active_ranks", math.nan)
    out["minutes"] = metrics["_run"].get("run_seconds", math.nan) / 60
    for name in sets[1:]:
        mutual_information = metrics[name].get("mean_mutual_information", math.nan)
        for header, key in OOD_COLUMNS:
            no_draws = key in MI_OOD and single_draw(metrics[name])
            out[f"{name} {header}"] = math.nan if no_draws else metrics[name].get(key, math.nan)
        out[f"{name} MI"] = mutual_information
    out["_sets"] = sets  # type: ignore[assignment]
    return out


def kept_seed(run: Path, seeds: list[int] | None) -> bool:
    """Whether the run folder ``.../seed<k>`` is one of ``seeds`` (all when ``None``)."""
    return seeds is None or run.name in {f"seed{k}" for k in seeds}


def collect(folder: Path, order: list[str] | None = None,
            seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """variant -> the values of each finished seed (only ``seeds`` when given), in
    ``order`` (else folder order)."""
    found: dict[str, list[dict]] = {}
    for run in sorted(folder.glob("*/seed*")):
        if kept_seed(run, seeds) and (run / rundir.METRICS).is_file():
            found.setdefault(run.parent.name, []).append(run_values(run))
    names = [n for n in (order or sorted(found)) if n in found]
    return {name: found[name] for name in names}


def cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) > 1:
        return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return f"{mean:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def in_distribution_table(runs: dict[str, list[dict]]) -> str:
    headers = ["method", "seeds", *[h for h, _, _ in ID_COLUMNS], "final train NLL", "T",
               "active ranks", "min/run"]
    rows = []
    for name, seeds in runs.items():
        row = [name, str(len(seeds))]
        for header in [h for h, _, _ in ID_COLUMNS] + ["train NLL", "T"]:
            row.append(cell([s[header] for s in seeds]))
        row.append(cell([s["active ranks"] for s in seeds], 1))
        row.append(cell([s["minutes"] for s in seeds], 1))
        rows.append(row)
    return _table(headers, rows)


def ood_table(runs: dict[str, list[dict]], name: str) -> str:
    headers = ["method", *[h for h, _ in OOD_COLUMNS], "mean MI"]
    rows = [[variant, *[cell([s.get(f"{name} {h}", math.nan) for s in seeds])
                        for h, _ in OOD_COLUMNS],
             cell([s.get(f"{name} MI", math.nan) for s in seeds], 4)]
            for variant, seeds in runs.items()]
    return _table(headers, rows)


def pairs_table(folder: Path, pairs: list[tuple[str, str]]) -> str:
    """Learned minus matched control, per seed, for the columns the question is about."""
    keys = ["val NLL", "NLL", "ECE", "ACC", "+T NLL", "+T ECE"]
    headers = ["learned", "control", "seeds", *[f"Δ {k}" for k in keys]]
    rows = []
    for learned, control in pairs:
        diffs: dict[str, list[float]] = {k: [] for k in keys}
        seeds = 0
        for run in sorted((folder / learned).glob("seed*")):
            other = folder / control / run.name
            if not ((run / rundir.METRICS).is_file() and (other / rundir.METRICS).is_file()):
                continue
            mine, theirs = run_values(run), run_values(other)
            seeds += 1
            for k in keys:
                diffs[k].append(mine[k] - theirs[k])
        if seeds:
            rows.append([learned, control, str(seeds), *[cell(diffs[k]) for k in keys]])
    return _table(headers, rows)


def main(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    order = None
    if args.variants:
        order = [v["name"] for v in yaml.safe_load(Path(args.variants).read_text())["variants"]]
    runs = collect(folder, order)
    if not runs:
        raise SystemExit(f"no finished runs under {folder}")
    sets = next(iter(runs.values()))[0]["_sets"]
    parts = [f"## In distribution: {sets[0]}", "", in_distribution_table(runs), ""]
    for name in sets[1:]:
        parts += [f"## Out of distribution: {name}", "", ood_table(runs, name), ""]
    if args.pairs:
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
        parts += ["## Learned posterior minus matched random dropout (per seed)", "",
                  pairs_table(folder, pairs), ""]
    text = "\n".join(parts)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="benchmark output folder (variant/seed*)")
    parser.add_argument("--variants", help="the variants YAML, for the row order")
    parser.add_argument("--pairs", help="comma-separated learned:control variant pairs")
    parser.add_argument("--out", help="markdown file to write")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
