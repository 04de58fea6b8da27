"""The sentiment benchmark's tables from its runs (experiments/sentiment_grid.sh):

- ``tables.md``: every method of sentiment_methods.yaml, then the validated gated setting
  (the gated variant of either file with the lowest mean validation NLL), in distribution
  (with the validation, "+ T" and mechanism columns) and by OOD detection per set;
- ``study.md``: every gated variant beside its matched random-dropout control
  (``<name>__matched``): validation and test NLL and ECE of both, the differences per seed,
  whether the learned posterior wins by more than 2 seed std, and how far q moved (keep
  rate, spread of q(z = 1), KL to random dropout at its rate, KL to the prior).

    python experiments/sentiment_tables.py runs/sentiment
    python experiments/sentiment_tables.py runs/sentiment --seeds 0 --out runs/sentiment/seed0

``--seeds`` keeps only those seeds (so that every row has the same ones); ``--out`` is where
the two files go (default: the folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_table as bt  # noqa: E402

from bslora_pyro.analysis.dropout import dropout_distance  # noqa: E402
from bslora_pyro.experiment import rundir  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = HERE / "sentiment_methods.yaml"
STUDY = HERE / "sentiment_study.yaml"
MATCHED = "__matched"


def _variants(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["variants"]


def gated_variants() -> list[str]:
    """The Bayesian sparse LoRA variants of both files, in order."""
    return [v["name"] for path in (METHODS, STUDY) for v in _variants(path)
            if v["method"] == "bslora"]


def validated(runs: dict[str, list[dict]], seeds: int) -> str | None:
    """The gated variant with the lowest mean validation NLL over ``seeds`` finished seeds."""
    done = {name: statistics.fmean(s["val NLL"] for s in runs[name])
            for name in gated_variants() if name in runs and len(runs[name]) >= seeds}
    return min(done, key=done.get) if done else None


def _gate_values(run: Path) -> dict[str, float]:
    table = dropout_distance(rundir.read_gate_posterior(run))
    total = table[table["module"] == "total"].iloc[0]
    return {"keep": total["keep"], "q sd": total["q_sd"],
            "KL to dropout": total["kl_to_dropout"], "KL to prior": total["kl_to_prior"]}


def _wins(diffs: list[float]) -> str:
    """'yes' when the learned posterior is lower by more than 2 seed std of the
    difference (with at least 2 seeds), 'no' otherwise."""
    if len(diffs) < 2:
        return "n/a"
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    return "yes" if mean < 0 and -mean > 2 * sd else "no"


def study_table(folder: Path, seeds: list[int] | None = None) -> str:
    headers = ["variant", "seeds", "val NLL", "matched val NLL", "Δ val NLL", "NLL",
               "matched NLL", "Δ NLL", "ECE", "matched ECE", "Δ ECE", "wins (val NLL / NLL / "
               "ECE)", "MI", "active ranks", "keep", "q sd", "KL to dropout", "KL to prior"]
    rows = []
    for name in gated_variants():
        learned, control = folder / name, folder / f"{name}{MATCHED}"
        pairs = [(run, control / run.name) for run in sorted(learned.glob("seed*"))
                 if bt.kept_seed(run, seeds) and (run / rundir.METRICS).is_file()
                 and (control / run.name / rundir.METRICS).is_file()]
        if not pairs:
            continue
        mine = [bt.run_values(a) for a, _ in pairs]
        theirs = [bt.run_values(b) for _, b in pairs]
        gates = [_gate_values(a) for a, _ in pairs]
        row = [name, str(len(pairs))]
        wins = []
        for key in ("val NLL", "NLL", "ECE"):
            diffs = [m[key] - t[key] for m, t in zip(mine, theirs, strict=True)]
            row += [bt.cell([m[key] for m in mine]), bt.cell([t[key] for t in theirs]),
                    bt.cell(diffs)]
            wins.append(_wins(diffs))
        row.append(" / ".join(wins))
        row.append(bt.cell([m["MI"] for m in mine], 4))
        row.append(bt.cell([m["active ranks"] for m in mine], 1))
        for key in ("keep", "q sd", "KL to dropout", "KL to prior"):
            row.append(bt.cell([g[key] for g in gates]))
        rows.append(row)
    return bt._table(headers, rows)


def main(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    order = [v["name"] for v in _variants(METHODS)]
    seeds_kept = [int(k) for k in args.seeds.split(",")] if args.seeds else None
    out = Path(args.out) if args.out else folder
    out.mkdir(parents=True, exist_ok=True)
    runs = bt.collect(folder, order + [v["name"] for v in _variants(STUDY)], seeds_kept)
    if not runs:
        raise SystemExit(f"no finished runs under {folder}")
    seeds = max(len(v) for v in runs.values())
    best = validated(runs, seeds)
    rows = {name: runs[name] for name in order if name in runs}
    if best is not None and best not in rows:
        rows[best] = runs[best]
    sets = next(iter(runs.values()))[0]["_sets"]
    parts = [f"Validated gated setting (lowest mean validation NLL over {seeds} seeds): "
             f"**{best}**", "", f"## In distribution: {sets[0]}", "",
             bt.in_distribution_table(rows), ""]
    for name in sets[1:]:
        parts += [f"## Out of distribution: {name}", "", bt.ood_table(rows, name), ""]
    (out / "tables.md").write_text("\n".join(parts))
    study = ["## Learned rank posterior vs random rank dropout at its sparsity", "",
             study_table(folder, seeds_kept), ""]
    (out / "study.md").write_text("\n".join(study))
    print("\n".join(parts + study))
    print(f"written: {out / 'tables.md'}, {out / 'study.md'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the benchmark's output folder (runs/sentiment)")
    parser.add_argument("--seeds", help="comma-separated seeds to keep (default: all)")
    parser.add_argument("--out", help="folder for tables.md and study.md (default: folder)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
