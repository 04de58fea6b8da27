"""Why a linearised Laplace predictive can rank the choices differently from its mean network.

The linearised predictive averages softmax(f) over f ~ N(mu, J Sigma J^T). When the logit
covariance is wide, the average is close to uniform and its argmax is set by the
differences between the choices' variances as much as by their means, so it can disagree
with argmax(mu), the network the Laplace was fitted on. For each Laplace run this prints the
accuracy of its mean network (argmax of the stored logit means), of its predictive, the
share of questions where the two disagree, the mean logit standard deviation and the mean
top probability, next to the accuracy of a plain-LoRA run of the same seed when given.

    python experiments/laplace_reorder.py runs/paper_cpu/arc_easy/laplace/seed* \
        --mle runs/paper_cpu/arc_easy/mle
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bslora_pyro.experiment import rundir


def reorder_stats(predictions_file: Path) -> dict[str, float] | None:
    """Mean-network vs predictive accuracy, disagreement, logit sd and top probability
    (None for an unlabelled set)."""
    rows = rundir.read_jsonl(predictions_file)
    if not rows or "logit_mean" not in rows[0]:
        raise SystemExit(f"{predictions_file}: no logit_mean (not a linearised Laplace run)")
    if rows[0]["label"] is None:
        return None

    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=values.__getitem__)

    mean_pick = [argmax(r["logit_mean"]) for r in rows]
    pred_pick = [argmax(r["probs"]) for r in rows]
    labels = [r["label"] for r in rows]
    sd = [statistics.fmean(r["logit_cov"][c][c] ** 0.5 for c in range(len(r["logit_mean"])))
          for r in rows]
    return {
        "n": len(rows),
        "mean_network_acc": statistics.fmean(p == y for p, y in zip(mean_pick, labels, strict=True)),
        "predictive_acc": statistics.fmean(p == y for p, y in zip(pred_pick, labels, strict=True)),
        "disagree": statistics.fmean(a != b for a, b in zip(mean_pick, pred_pick, strict=True)),
        "logit_sd": statistics.fmean(sd),
        "top_prob": statistics.fmean(max(r["probs"]) for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="Laplace run folders")
    parser.add_argument("--mle", type=Path, help="folder of plain-LoRA runs (seed<k> inside)")
    args = parser.parse_args(argv)
    sets_of = {run: [k for k in rundir.read_metrics(run) if not k.startswith("_")]
               for run in args.runs}
    for run, sets in sets_of.items():
        if not sets:
            raise SystemExit(f"{run}: no {rundir.METRICS} (is it a finished run?)")
    print("| run | set | MLE ACC | mean-network ACC | predictive ACC | disagree | "
          "logit sd | top prob |")
    print("|---|---|---|---|---|---|---|---|")
    for run, sets in sets_of.items():
        mle_metrics = rundir.read_metrics(args.mle / run.name) if args.mle else {}
        for label in sets:
            stats = reorder_stats(run / rundir.PREDICTIONS / f"{rundir.safe_name(label)}.jsonl")
            if stats is None:
                continue
            mle = f"{mle_metrics[label]['acc']:.3f}" if label in mle_metrics else ""
            print(f"| {run} | {label} | {mle} | {stats['mean_network_acc']:.3f} | "
                  f"{stats['predictive_acc']:.3f} | {stats['disagree']:.3f} | "
                  f"{stats['logit_sd']:.2f} | {stats['top_prob']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
