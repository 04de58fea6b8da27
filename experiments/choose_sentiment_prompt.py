"""Which prompt and choice continuations should ``movie_reviews`` use? Zero-shot
``choice_loglik`` scores of each candidate on the first reviews of the dev split (never the
test split), with the negative log-likelihood of the right answer as the criterion.

    OMP_NUM_THREADS=2 python experiments/choose_sentiment_prompt.py --limit 500
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from bslora_pyro import metrics as M
from bslora_pyro.backbones import load_backbone
from bslora_pyro.data import load_task
from bslora_pyro.data.prompts import sentiment_loglik_pairs
from bslora_pyro.persistence import atomic_write_text
from bslora_pyro.scoring import ChoiceScorer

#: (name, context with ``{text}``, continuations for (negative, positive))
CANDIDATES: tuple[tuple[str, str, tuple[str, str]], ...] = (
    ("review-question", "Movie review: {text}\nIs the review positive or negative?",
     (" negative", " positive")),
    ("sst2-lm-eval", "{text}\nQuestion: Is this sentence positive or negative?\nAnswer:",
     (" negative", " positive")),
    ("sentiment-label", "Movie review: {text}\nSentiment:", (" negative", " positive")),
    ("liked-yes-no", "Movie review: {text}\nDid the reviewer like the movie?\nAnswer:",
     (" no", " yes")),
)


def reprompt(examples: list, context: str, continuations: tuple[str, str]) -> list:
    """The examples with a candidate's ``choice_loglik`` pairs."""
    return [dataclasses.replace(ex, loglik_pairs=sentiment_loglik_pairs(ex.question, context,
                                                                        continuations))
            for ex in examples]


@torch.no_grad()
def choice_probs(backbone, scorer: ChoiceScorer, examples: list, batch_size: int) -> torch.Tensor:
    """Zero-shot choice probabilities ``[N, C]``."""
    out = []
    for start in range(0, len(examples), batch_size):
        batch = scorer.encode(examples[start : start + batch_size])
        out.append(scorer.logits(backbone, batch, 1)[0].float().softmax(-1))
    return torch.cat(out)


def score_candidates(backbone, scorer: ChoiceScorer, examples: list,
                     batch_size: int) -> list[dict]:
    """Per candidate: NLL, ACC, ECE, Brier and the share of reviews predicted positive."""
    labels = torch.tensor([ex.label for ex in examples])
    rows = []
    for name, context, continuations in CANDIDATES:
        probs = choice_probs(backbone, scorer, reprompt(examples, context, continuations),
                             batch_size)
        summary = M.summarize(probs.numpy(), labels.numpy())
        print(f"{name}: NLL {summary['nll']:.4f}", file=sys.stderr, flush=True)
        rows.append({"name": name, "context": context, "continuations": continuations,
                     **summary, "predicted_positive": float((probs.argmax(-1) == 1).float().mean()),
                     "positive": float(labels.float().mean())})
    return rows


def markdown(rows: list[dict]) -> str:
    best = min(rows, key=lambda r: r["nll"])["name"]
    lines = ["| candidate | context | continuations | NLL | ACC | ECE | Brier | predicted "
             "positive |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"**{r['name']}**" if r["name"] == best else r["name"]
        context = r["context"].replace("\n", "\\n")
        continuations = " / ".join(repr(c) for c in r["continuations"])
        lines.append(f"| {name} | `{context}` | {continuations} | {r['nll']:.4f} | "
                     f"{r['acc']:.3f} | {r['ece']:.3f} | {r['brier']:.4f} | "
                     f"{r['predicted_positive']:.3f} |")
    n, positive = rows[0]["n"], rows[0]["positive"]
    lines.append(f"\n{n} dev reviews ({positive:.3f} positive); bold: the lowest NLL.")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    examples = load_task("movie_reviews", args.split, limit=args.limit)
    backbone, tokenizer = load_backbone(args.model, task="causal_lm", device="cpu")
    scorer = ChoiceScorer(tokenizer, "choice_loglik", max_length=args.max_length)
    rows = score_candidates(backbone, scorer, examples, args.batch_size)
    table = markdown(rows)
    print(f"model {args.model}, movie_reviews:{args.split}, first {len(examples)} reviews, "
          f"choice_loglik, max_length {args.max_length}\n")
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), table + "\n")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m",
                        help="backbone: offline alias, hub id or folder (default smollm2-135m)")
    parser.add_argument("--split", default="dev", choices=("dev", "train"),
                        help="the split to choose on (never test; default dev)")
    parser.add_argument("--limit", type=int, default=500, help="first N reviews (default 500)")
    parser.add_argument("--max-length", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="also write the table to this markdown file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
