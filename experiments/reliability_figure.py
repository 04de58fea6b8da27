"""Reliability diagrams of several runs on one evaluation set, overlaid (one figure):

- left: accuracy against mean confidence in 15 equal-width confidence bins (bins holding
  fewer than ``--min-count`` examples are left out), the diagonal is perfect calibration;
- right: how many examples fall in each confidence bin.

    python experiments/reliability_figure.py runs/sentiment/{mle,bslora,random_mask}/seed0 \\
        --set movie_reviews:test --out docs/results/img/sentiment_reliability.png

A run is labelled by its variant folder (``runs/sentiment/mle/seed0`` -> ``mle``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bslora_pyro import metrics as M
from bslora_pyro.experiment import rundir


def _label(run: Path) -> str:
    return run.parent.name if run.name.startswith("seed") else run.name


def main(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    file_name = f"{rundir.safe_name(args.set)}.jsonl"  # as the run wrote it
    fig, (curve, hist) = plt.subplots(1, 2, figsize=(9, 4))
    curve.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for run in map(Path, args.runs):
        path = run / rundir.PREDICTIONS / file_name
        if not path.is_file():
            raise SystemExit(f"{run}: no predictions for {args.set} ({path} is missing)")
        preds = rundir.read_predictions(path)
        probs, labels = preds.probs.numpy(), preds.labels.numpy()
        bins = M.reliability_bins(probs, labels)
        kept = bins["count"] >= args.min_count
        ece = M.expected_calibration_error(probs, labels)
        label = f"{_label(run)} (ECE {ece:.3f})"
        curve.plot(bins["confidence"][kept], bins["accuracy"][kept], "o-", label=label)
        centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
        filled = bins["count"] > 0
        hist.plot(centers[filled], bins["count"][filled], "o-", label=_label(run))
    curve.set(xlabel="mean confidence", ylabel="accuracy", title=args.set,
              xlim=(0.45 if args.binary else 0, 1), ylim=(0, 1))
    curve.legend(fontsize=8, loc="upper left")
    hist.set(xlabel="confidence", ylabel="examples per bin", yscale="log",
             xlim=(0.45 if args.binary else 0, 1),
             title="where the confidences fall")
    hist.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"written: {args.out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--set", required=True, help="evaluation set, e.g. movie_reviews:test")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--min-count", type=int, default=10,
                        help="leave out bins with fewer examples (default 10)")
    parser.add_argument("--binary", action="store_true",
                        help="two choices: confidences start at 0.5, so the x axis does")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
