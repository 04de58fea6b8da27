"""Run the paper's grid (in-distribution tasks and the OBQA distribution shift) and write
paper-style tables: methods x tasks for ACC, ECE, NLL, Brier and the predictive's mutual
information, mean ± std over seeds.

Example (a GPU machine with the hub reachable)::

    python experiments/paper_grid.py experiments/configs/paper_llama31_8b.yaml \
        --out runs/paper --methods mle,map,mc_dropout,ensemble,blob,laplace,bslora

At CPU scale (``experiments/paper_cpu.sh``) the rows are named variants instead
(``--variants experiments/paper_cpu_methods.yaml``: ``{name, method, set}`` each) and the
sets are capped (``--train-limit``, ``--eval-limit``).

``--tasks`` picks the in-distribution tasks; each is trained on its train split and scored
on its evaluation split. The shift evaluation reuses the OBQA runs: they are evaluated on
ARC-C, ARC-E, MMLU college chemistry and college physics. A grid started again keeps the
runs that finished and resumes the others from their checkpoints; ``--table-only`` trains
nothing and tabulates the runs that have finished, marking cells with fewer seeds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.compare import TEMPERED_SUFFIX, collect
from bslora_pyro.experiment.config import build_dataclass, load_config
from bslora_pyro.experiment.grid import run_variants, select_variants

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
SHORT = {"winogrande_s": "WG-S", "arc_challenge": "ARC-C", "arc_easy": "ARC-E",
         "winogrande_m": "WG-M", "openbookqa": "OBQA", "boolq": "BoolQ",
         "mmlu:college_chemistry": "Chem", "mmlu:college_physics": "Phy"}
#: metric key -> table heading; MI (the predictive's mutual information, nats) is how much
#: the posterior draws disagree, the quantity a model average adds over one prediction
METRICS = {"acc": "ACC", "ece": "ECE", "nll": "NLL", "brier": "BRIER",
           "mean_mutual_information": "MI"}


def task_config(base, task: str, train_limit: int | None = None,
                eval_limit: int | None = None):
    """The base config trained and evaluated on ``task`` (OBQA also gets the shift sets)."""
    data = copy.deepcopy(base.to_dict())
    train_split, eval_split = IN_DISTRIBUTION[task]
    data["name"] = task
    data["data"]["train"] = {"task": task, "split": train_split, "limit": train_limit}
    evals = [{"task": task, "split": eval_split, "limit": eval_limit}]
    if task == "openbookqa":
        evals += [{"task": t, "split": s, "limit": eval_limit} for t, s in SHIFT]
    data["data"]["eval"] = evals
    return build_dataclass(type(base), data)


def columns(tasks: list[str]) -> list[tuple[str, str, str]]:
    """(header, task folder, eval-set label) per column: in-distribution, then shift."""
    out = [(SHORT.get(t, t), t, f"{t}:{IN_DISTRIBUTION[t][1]}") for t in tasks]
    if "openbookqa" in tasks:
        out += [(f"OBQA→{SHORT.get(t, t)}", "openbookqa", f"{t}:{s}") for t, s in SHIFT]
    return out


def _cell(values: list[float] | None, seeds: int | None = None) -> str:
    """mean ± std over seeds; ``(n = k)`` marks a cell with fewer than ``seeds`` runs."""
    if not values:
        return ""
    text = (f"{values[0]:.3f}" if len(values) == 1
            else f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}")
    return text + (f" (n = {len(values)})" if seeds and len(values) < seeds else "")


def paper_tables(out: Path, tasks: list[str], runs: dict[str, dict[str, list[Path]]],
                 seeds: int | None = None) -> str:
    """One markdown table per metric: rows = variants (and ``<variant> + T`` for runs with
    a post-hoc temperature), columns = tasks, then the OBQA shift sets. ``runs`` maps
    task -> variant name -> its run directories (one per seed); a cell with fewer than
    ``seeds`` runs says how many it has."""
    tables: dict[str, dict] = {}
    for task, by_variant in runs.items():
        table = tables.setdefault(task, {})
        for name, paths in by_variant.items():
            for setting, sets in collect(paths).items():
                tempered = setting.endswith(TEMPERED_SUFFIX)
                table[name + (TEMPERED_SUFFIX if tempered else "")] = sets
    rows = list(dict.fromkeys(name for table in tables.values() for name in table))
    cols = columns(tasks)
    parts = []
    for metric, heading in METRICS.items():
        lines = [f"### {heading}", "",
                 "| method | " + " | ".join(header for header, _, _ in cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for row in rows:
            cells = [_cell(tables.get(task, {}).get(row, {}).get(label, {}).get(metric), seeds)
                     for _, task, label in cols]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts.append(_validation_table(tasks, runs, seeds))
    parts.append(_time_table(tasks, runs))
    markdown = "\n\n".join(parts)
    (out / "paper_table.md").write_text(markdown + "\n")
    return markdown


def _validation_table(tasks: list[str], runs: dict[str, dict[str, list[Path]]],
                      seeds: int | None) -> str:
    """Each variant's NLL on its task's validation split: the number every choice is made on."""
    lines = ["### Validation NLL (selection)", "",
             "| method | " + " | ".join(SHORT.get(t, t) for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    names = list(dict.fromkeys(name for by_variant in runs.values() for name in by_variant))
    for name in names:
        cells = []
        for task in tasks:
            values = [rundir.read_metrics(p).get("_validation", {}).get("nll")
                      for p in runs.get(task, {}).get(name, [])]
            cells.append(_cell([v for v in values if v is not None], seeds))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _time_table(tasks: list[str], runs: dict[str, dict[str, list[Path]]]) -> str:
    """Minutes per run (mean over the seeds; loading, training and every evaluation set) and
    the grid's total: the wall time of running it in one process, one run after another
    (a resumed run counts the part after its last start)."""
    lines = ["### Run time (minutes per run)", "",
             "| method | " + " | ".join(SHORT.get(t, t) for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    names = list(dict.fromkeys(name for by_variant in runs.values() for name in by_variant))
    total, timed, untimed = 0.0, 0, 0
    for name in names:
        cells = []
        for task in tasks:
            seconds = [rundir.read_metrics(p).get("_run", {}).get("run_seconds")
                       for p in runs.get(task, {}).get(name, [])]
            untimed += sum(s is None for s in seconds)
            seconds = [s for s in seconds if s is not None]
            total, timed = total + sum(seconds), timed + len(seconds)
            cells.append(f"{statistics.fmean(seconds) / 60:.1f}" if seconds else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"{timed} timed runs, {total / 3600:.2f} h summed over the runs"
              " (the wall time if they ran one after another)"
              + (f" ({untimed} finished runs have no timing: made before runs recorded it)"
                 if untimed else "") + "."]
    return "\n".join(lines)


def read_variants(args: argparse.Namespace) -> list[dict]:
    if args.variants:
        return yaml.safe_load(Path(args.variants).read_text())["variants"]
    return [{"name": m, "method": m} for m in args.methods.split(",")]


def main(args: argparse.Namespace) -> None:
    base = load_config(args.config, args.set, args.data_dir)
    variants = select_variants(read_variants(args), args.only)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = args.tasks.split(",")
    out = Path(args.out)
    if args.table_only and not out.is_dir():
        raise SystemExit(f"--table-only: {out} does not exist (no runs to tabulate)")
    runs: dict[str, dict[str, list[Path]]] = {}
    for task in tasks:
        if task not in IN_DISTRIBUTION:
            raise SystemExit(f"unknown task {task!r}; choose from {', '.join(IN_DISTRIBUTION)}")
        chosen = [v for v in variants if task in v.get("tasks", tasks)]
        if not args.table_only:
            config = task_config(base, task, args.train_limit, args.eval_limit)
            run_variants(config, out / task, chosen, seeds, progress=not args.quiet)
        paths = {v["name"]: [out / task / v["name"] / f"seed{s}" for s in seeds] for v in chosen}
        runs[task] = {name: finished for name, dirs in paths.items()
                      if (finished := [d for d in dirs if (d / rundir.METRICS).is_file()])}
    print(paper_tables(out, tasks, runs, len(seeds)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--methods", default="mle,map,mc_dropout,ensemble,blob,laplace,bslora")
    parser.add_argument("--variants", help="YAML `variants: [{name, method, set, tasks}]` "
                        "(replaces --methods; `tasks` limits a variant to some tasks)")
    parser.add_argument("--only", help="comma-separated variant names to run (and tabulate)")
    parser.add_argument("--tasks", default=",".join(IN_DISTRIBUTION))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-limit", type=int, help="first N training questions per task")
    parser.add_argument("--eval-limit", type=int, help="first N questions per evaluation set")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the runs of --out that have finished")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
