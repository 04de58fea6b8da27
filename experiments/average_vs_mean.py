"""Does a stochastic method's benefit come from the model average or from the training?

For each finished run, its first evaluation set is scored again with one deterministic
forward (gates at their posterior mean, masks at their keep probability, dropout off) and
set next to the run's Monte Carlo average (``metrics.json``). When the two agree, the
predictive's M draws add nothing: what changed the numbers is what training did to the
weights (sparser gates, noise during training), not the Bayesian model average.

    python experiments/average_vs_mean.py runs/paper_cpu/arc_easy/*/seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.evaluation import predict_split, set_metrics
from bslora_pyro.experiment.run_tables import runs_parser, tabulate_runs
from bslora_pyro.experiment.setup import (
    load_split,
    load_trained_method,
    read_run_config,
    seed_everything,
)

KEYS = ("acc", "ece", "nll")


def compare_run(run_dir: Path, data_dir: str | None = None, progress: bool = True) -> dict:
    """The run's M-draw metrics and its one-forward (``deterministic``) metrics on its first
    evaluation set."""
    config = read_run_config(run_dir)
    metrics = rundir.read_metrics(run_dir)
    split = config.data.eval[0]
    if split.label not in metrics:
        raise SystemExit(f"{run_dir}: {rundir.METRICS} has no {split.label!r}; is it finished?")
    seed_everything(config.seed)
    method = load_trained_method(run_dir, config)
    examples = load_split(split, data_dir if data_dir is not None else config.data.dir)
    one = set_metrics(predict_split(config, method, examples, progress, deterministic=True))
    average = metrics[split.label]
    return {"run": str(run_dir), "set": split.label, "method": config.method,
            "num_samples": average.get("num_samples"),
            "mi": average.get("mean_mutual_information"),
            **{f"average_{k}": average[k] for k in KEYS},
            **{f"mean_{k}": one[k] for k in KEYS}}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | set | M | MI | average ACC / ECE / NLL | one forward ACC / ECE / NLL |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        average = " / ".join(f"{r[f'average_{k}']:.3f}" for k in KEYS)
        one = " / ".join(f"{r[f'mean_{k}']:.3f}" for k in KEYS)
        lines.append(f"| {r['run']} | {r['set']} | {r['num_samples']} | {r['mi'] or 0:.3f} | "
                     f"{average} | {one} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    return tabulate_runs(
        "average_vs_mean", args.runs,
        lambda run: [compare_run(run, args.data_dir, progress=not args.quiet)],
        markdown, args.out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = runs_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
