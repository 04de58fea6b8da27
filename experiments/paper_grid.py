"""Run the paper's grid (in-distribution tasks and the OBQA distribution shift) and write
paper-style tables: methods x tasks for ACC, ECE, NLL and Brier, mean ± std over seeds.

Example (a GPU machine with the hub reachable)::

    python experiments/paper_grid.py experiments/configs/paper_llama31_8b.yaml \
        --out runs/paper --methods mle,map,mc_dropout,ensemble,blob,laplace,bslora

``--tasks`` picks the in-distribution tasks; each is trained on its train split and scored
on its evaluation split. The shift evaluation reuses the OBQA runs: they are evaluated on
ARC-C, ARC-E, MMLU college chemistry and college physics.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from bslora_pyro.experiment.compare import compare_tables
from bslora_pyro.experiment.config import build_dataclass, load_config
from bslora_pyro.experiment.grid import run_grid

#: task -> (train split, evaluation split), as in the BLoB protocol
IN_DISTRIBUTION = {
    "winogrande_s": ("train", "dev"),
    "arc_challenge": ("train", "dev"),
    "arc_easy": ("train", "dev"),
    "winogrande_m": ("train", "dev"),
    "openbookqa": ("train", "test"),
    "boolq": ("train", "validation"),
}
SHIFT = [
    ("arc_challenge", "dev"),
    ("arc_easy", "dev"),
    ("mmlu:college_chemistry", "test"),
    ("mmlu:college_physics", "test"),
]


def task_config(base, task: str):
    """The base config trained and evaluated on ``task`` (OBQA also gets the shift sets)."""
    data = copy.deepcopy(base.to_dict())
    train_split, eval_split = IN_DISTRIBUTION[task]
    data["name"] = task
    data["data"]["train"] = {"task": task, "split": train_split, "limit": None}
    evals = [{"task": task, "split": eval_split, "limit": None}]
    if task == "openbookqa":
        evals += [{"task": t, "split": s, "limit": None} for t, s in SHIFT]
    data["data"]["eval"] = evals
    return build_dataclass(type(base), data)


def main(args: argparse.Namespace) -> None:
    base = load_config(args.config, args.set, args.data_dir)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    runs = []
    for task in args.tasks.split(","):
        if task not in IN_DISTRIBUTION:
            raise SystemExit(f"unknown task {task!r}; choose from {', '.join(IN_DISTRIBUTION)}")
        run_grid(task_config(base, task), out / task, methods, seeds, progress=not args.quiet)
        runs += [out / task / m / f"seed{s}" for m in methods for s in seeds]
    markdown, csv_text = compare_tables(runs)
    (out / "paper_table.md").write_text(markdown + "\n")
    (out / "paper_table.csv").write_text(csv_text)
    print(markdown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--methods", default="mle,map,mc_dropout,ensemble,blob,laplace,bslora")
    parser.add_argument("--tasks", default=",".join(IN_DISTRIBUTION))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
