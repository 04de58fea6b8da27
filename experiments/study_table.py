"""One table of a calibration study's runs: the validation numbers every choice is made on,
next to the evaluation sets, the mechanism measures (training NLL, mutual information,
expected active ranks) and the post-hoc temperature.

    python experiments/study_table.py runs/study_long runs/study_short --out runs/study.md

The selected variant is the gated one with the lowest validation NLL in the first folder.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir

TRAIN_TAIL = 25  # training NLL: the mean over the last steps


def _train_nll(run: Path) -> float:
    rows = rundir.read_jsonl(run / rundir.TRAIN_LOG)[-TRAIN_TAIL:]
    return sum(r["nll"] for r in rows) / len(rows) if rows else math.nan


def row(run: Path) -> dict:
    metrics = rundir.read_metrics(run)
    config = yaml.safe_load((run / rundir.CONFIG).read_text())
    sets = [s for s in metrics if not s.startswith("_")]
    tempered = metrics.get(rundir.TEMPERED, {})
    out = {
        "variant": run.parent.name,
        "method": config["method"],
        "steps": config["train"]["steps"],
        "val_nll": metrics.get("_validation", {}).get("nll", math.nan),
        "val_ece": metrics.get("_validation", {}).get("ece", math.nan),
        "train_nll": _train_nll(run),
        "ranks": metrics["_run"].get("expected_active_ranks", math.nan),
        "T": tempered.get("temperature", math.nan),
    }
    for s in sets:
        short = s.split(":")[0]
        for key in ("acc", "ece", "nll", "mean_mutual_information"):
            out[f"{short}/{key}"] = metrics[s][key]
        for key in ("ece", "nll"):
            out[f"{short}+T/{key}"] = tempered.get("sets", {}).get(s, {}).get(key, math.nan)
    return out


def table(folders: list[Path]) -> tuple[str, str | None]:
    rows = [row(run) for folder in folders for run in sorted(folder.glob("*/seed*"))
            if (run / rundir.METRICS).is_file()]
    if not rows:
        raise SystemExit(f"no finished runs under {', '.join(map(str, folders))}")
    sets = [k.split("/")[0] for k in rows[0] if k.endswith("/acc")]
    header = ["variant", "steps", "val NLL", "val ECE", "train NLL"]
    for s in sets:
        header += [f"{s} ACC", f"{s} ECE", f"{s} NLL", f"{s} MI"]
    header += ["active ranks", "T"] + [f"{s} +T ECE / NLL" for s in sets]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        cells = [r["variant"], str(r["steps"])] + [f"{r[k]:.3f}" for k in
                                                  ("val_nll", "val_ece", "train_nll")]
        for s in sets:
            cells += [f"{r.get(f'{s}/{k}', math.nan):.3f}" for k in
                      ("acc", "ece", "nll", "mean_mutual_information")]
        cells += [f"{r['ranks']:.1f}" if not math.isnan(r["ranks"]) else "",
                  f"{r['T']:.2f}"]
        cells += [f"{r.get(f'{s}+T/ece', math.nan):.3f} / {r.get(f'{s}+T/nll', math.nan):.3f}"
                  for s in sets]
        lines.append("| " + " | ".join(cells) + " |")
    first = [r for r in rows if r["method"] == "bslora"
             and r["steps"] == rows[0]["steps"] and not math.isnan(r["val_nll"])]
    best = min(first, key=lambda r: r["val_nll"])["variant"] if first else None
    return "\n".join(lines), best


def main(args: argparse.Namespace) -> None:
    markdown, best = table([Path(f) for f in args.folders])
    text = markdown + (f"\n\nLowest validation NLL of the gated variants: **{best}**\n"
                       if best else "\n")
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print(json.dumps({"selected": best}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="study output folders (variant/seed*)")
    parser.add_argument("--out", help="markdown file to write")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
