"""What makes Bayesian sparse LoRA calibrate at small scale: named variants of one config,
each with the same data, seeds and budget, run in one process (the frozen-prefix cache is
shared) and compared in one table.

    python experiments/calibration_study.py experiments/configs/arc_quickstart.yaml \
        experiments/study_variants.yaml --out runs/study --seeds 0

Several variants files run one after the other (``--only`` picks from all of them).
"""

from __future__ import annotations

import argparse

import yaml

from bslora_pyro.experiment.config import load_config
from bslora_pyro.experiment.grid import run_variants, select_variants


def main(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.set, args.data_dir)
    variants = [v for path in args.variants for v in yaml.safe_load(open(path))["variants"]]
    variants = select_variants(variants, args.only)
    seeds = [int(s) for s in args.seeds.split(",")]
    markdown, _ = run_variants(config, args.out, variants, seeds, progress=not args.quiet)
    print(markdown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("variants", nargs="+",
                        help="YAML file(s) with a list `variants: [{name, method, set}]`")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", help="comma-separated variant names to run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
