"""Does the scoring prefer short answers? Each finished run's predictions, set by set, next
to the answers' lengths in scored tokens.

Summed log-likelihood scoring (``choice_loglik``) adds one negative term per answer token,
so a long answer needs a far higher per-token likelihood to win. When the predictions pick
the shortest choice much more often than the correct answer is the shortest one, accuracy
and calibration measure that length penalty, not the model's knowledge; ``choice_loglik_mean``
divides it out.

    python experiments/length_bias.py runs/paper_cpu/openbookqa/zero_shot/seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.run_tables import runs_parser, tabulate_runs
from bslora_pyro.experiment.setup import build_scorer_and_backbone, load_split, read_run_config
from bslora_pyro.scoring.modes import SCORING_MODES, LoglikMode

#: the scorings whose choices are answer tokens (``choice_loglik`` and its variants)
LOGLIK_MODES = tuple(name for name, mode in SCORING_MODES.items() if isinstance(mode, LoglikMode))


def answer_lengths(scorer, examples: list) -> torch.Tensor:
    """Scored tokens of each choice ``[N, C]`` (0 for a missing choice)."""
    batch = scorer.encode(examples)
    return batch.target_mask.sum(-1).reshape(batch.num_examples, batch.num_choices)


def length_summary(lengths: torch.Tensor, probs: list[list[float]], labels: list[int]) -> dict:
    """Accuracy; how often the predicted and the correct choice are among the shortest
    (and the longest) of their question; their mean lengths in tokens."""
    n = len(labels)
    lengths = lengths.float()
    real = lengths > 0
    shortest = lengths == lengths.masked_fill(~real, float("inf")).min(1, keepdim=True).values
    longest = lengths == lengths.masked_fill(~real, -1.0).max(1, keepdim=True).values
    picked = torch.tensor([max(range(len(p)), key=p.__getitem__) for p in probs])
    label = torch.tensor(labels)
    rows = torch.arange(n)
    return {
        "n": n,
        "acc": float((picked == label).float().mean()),
        "picked_shortest": float(shortest[rows, picked].float().mean()),
        "correct_shortest": float(shortest[rows, label].float().mean()),
        "picked_longest": float(longest[rows, picked].float().mean()),
        "correct_longest": float(longest[rows, label].float().mean()),
        "picked_tokens": float(lengths[rows, picked].mean()),
        "correct_tokens": float(lengths[rows, label].mean()),
    }


def run_rows(run_dir: Path, data_dir: str | None = None) -> list[dict]:
    """One summary per evaluation set of a finished run."""
    config = read_run_config(run_dir)
    if config.model.scoring not in LOGLIK_MODES:
        raise SystemExit(f"{run_dir}: scoring {config.model.scoring!r} has no answer tokens; "
                         f"length bias needs one of {', '.join(LOGLIK_MODES)}")
    _, scorer = build_scorer_and_backbone(config)
    out = []
    for split in config.data.eval:
        path = run_dir / rundir.PREDICTIONS / f"{rundir.safe_name(split.label)}.jsonl"
        predictions = {row["uid"]: row for row in rundir.read_jsonl(path)}
        if not predictions:
            raise SystemExit(f"{run_dir}: no predictions for {split.label!r}; is it finished?")
        examples = load_split(split, data_dir if data_dir is not None else config.data.dir)
        examples = [ex for ex in examples if ex.uid in predictions]
        rows = [predictions[ex.uid] for ex in examples]
        summary = length_summary(answer_lengths(scorer, examples), [r["probs"] for r in rows],
                                 [r["label"] for r in rows])
        out.append({"run": str(run_dir), "scoring": config.model.scoring, "set": split.label,
                    **summary})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| run | scoring | set | n | ACC | picked is shortest | correct is shortest "
             "| picked is longest | correct is longest | tokens: picked / correct |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['scoring']} | {r['set']} | {r['n']} | {r['acc']:.3f} | "
            f"{r['picked_shortest']:.3f} | {r['correct_shortest']:.3f} | "
            f"{r['picked_longest']:.3f} | {r['correct_longest']:.3f} | "
            f"{r['picked_tokens']:.1f} / {r['correct_tokens']:.1f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    return tabulate_runs("length_bias", args.runs, lambda run: run_rows(run, args.data_dir),
                         markdown, args.out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return runs_parser(__doc__.split("\n\n")[0]).parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
