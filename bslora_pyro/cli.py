"""The ``bslora`` command line: train, evaluate, compare, analyze."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> None:
    from bslora_pyro.experiment.config import load_config
    from bslora_pyro.experiment.report import metrics_table
    from bslora_pyro.experiment.runner import run_experiment

    config = load_config(args.config, args.set, args.data_dir)
    results = run_experiment(config, args.out, progress=not args.quiet, resume=args.resume)
    if results:  # empty on the non-main processes of a multi-process launch
        print(metrics_table(results))
        print(f"run directory: {args.out} (report: {Path(args.out) / 'report.md'})")


def _evaluate(args: argparse.Namespace) -> None:
    from bslora_pyro.experiment.evaluation import evaluate_run
    from bslora_pyro.experiment.report import metrics_table

    results = evaluate_run(args.run_dir, args.task, split=args.split, limit=args.limit,
                           data_dir=args.data_dir, num_samples=args.num_samples,
                           progress=not args.quiet, columns=args.column)
    print(metrics_table(results))


def _compare(args: argparse.Namespace) -> None:
    from bslora_pyro.experiment.compare import compare_tables

    markdown, csv_text = compare_tables([Path(p) for p in args.run_dirs])
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(markdown + "\n")
        (out / "comparison.csv").write_text(csv_text)
        print(f"written: {out / 'comparison.md'}, {out / 'comparison.csv'}")


def _grid(args: argparse.Namespace) -> None:
    from bslora_pyro.experiment.config import load_config
    from bslora_pyro.experiment.grid import run_grid

    config = load_config(args.config, args.set, args.data_dir)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    markdown, _ = run_grid(config, args.out, methods, seeds, progress=not args.quiet,
                           rerun=args.rerun)
    print(markdown)
    print(f"written: {Path(args.out) / 'comparison.md'}")


def _calibrate(args: argparse.Namespace) -> None:
    from bslora_pyro.experiment.evaluation import recalibrate_run

    for run in args.run_dirs:
        result = recalibrate_run(run, progress=not args.quiet)
        print(f"{run}: T = {result['temperature']:.3f}")


def _analyze(args: argparse.Namespace) -> None:
    from bslora_pyro.analysis import analyze_run
    from bslora_pyro.analysis.dropout import dropout_distance, verdict
    from bslora_pyro.experiment import rundir

    controls = [Path(c) for c in args.control]
    for path in analyze_run(args.run_dir, controls=controls):
        print(path)
    if (Path(args.run_dir) / rundir.GATE_POSTERIOR).is_file():
        print(verdict(dropout_distance(rundir.read_gate_posterior(Path(args.run_dir)))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bslora", description="Calibrated fine-tuning with Bayesian sparse LoRA (Pyro)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method from a YAML config, then evaluate it")
    train.add_argument("config", help="YAML config (see experiments/configs/)")
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.steps=100")
    train.add_argument("--data-dir", help="local data folder (else BSLORA_DATA_DIR or the hub)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--resume", action="store_true",
                       help="continue a killed run from OUT/checkpoint (same config and seed)")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on another task")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--task", required=True,
                          help="e.g. arc_challenge, mmlu:college_physics, file:PATH (a .jsonl, "
                               ".json or .csv file) or hub:ID (a hub dataset)")
    evaluate.add_argument("--split", help="split of the task (default: its only split, else "
                                          "dev) or hub dataset")
    evaluate.add_argument("--column", action="append", default=[], metavar="KEY=VALUE",
                          help="column mapping of a file: or hub: set, e.g. --column question=Q "
                               "(default: the run's own training-data mapping)")
    evaluate.add_argument("--limit", type=int, help="first N questions only")
    evaluate.add_argument("--data-dir", help="local data folder")
    evaluate.add_argument("--num-samples", type=int, help="Monte Carlo samples M")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    compare = sub.add_parser("compare", help="side-by-side table of runs (mean ± std over seeds)")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--out", help="folder for comparison.md and comparison.csv")
    compare.set_defaults(func=_compare)

    grid = sub.add_parser("grid", help="several methods x seeds on one config, then compare")
    grid.add_argument("config")
    grid.add_argument("--out", required=True)
    grid.add_argument("--methods", default="zero_shot,mle,bslora",
                      help="comma-separated method names (default zero_shot,mle,bslora)")
    grid.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    grid.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    grid.add_argument("--data-dir")
    grid.add_argument("--quiet", action="store_true")
    grid.add_argument("--rerun", action="store_true",
                      help="redo runs that already finished (default: keep them)")
    grid.set_defaults(func=_grid)

    calibrate = sub.add_parser(
        "calibrate", help="fit a finished run's post-hoc temperature on its validation split")
    calibrate.add_argument("run_dirs", nargs="+")
    calibrate.add_argument("--quiet", action="store_true")
    calibrate.set_defaults(func=_calibrate)

    analyze = sub.add_parser("analyze", help="ArviZ data and plots of a run's gate posterior")
    analyze.add_argument("run_dir")
    analyze.add_argument("--control", action="append", default=[], metavar="RUN_DIR",
                         help="a matched random-dropout run (random_mask with match_run) to "
                              "compare with; repeat for several seeds")
    analyze.set_defaults(func=_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError) as error:
        message = " ".join(str(error).split()) or type(error).__name__  # always one line
        print(f"bslora {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
