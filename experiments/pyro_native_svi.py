"""Bayesian sparse LoRA trained by Pyro's own ``SVI`` and predicted through ``Predictive``.

    python experiments/pyro_native_svi.py --model smollm2-135m --steps 50

The model and guide are ordinary Pyro programs over the adapter's random variables; the
library's trainer (``SVITrainer``) adds schedules, checkpoints and fast paths on top.
"""

from __future__ import annotations

import argparse

import pyro
import torch

from bslora_pyro import AdapterConfig, BayesianLora
from bslora_pyro.backbones import load_backbone
from bslora_pyro.data import load_task
from bslora_pyro.inference import ExactELBO
from bslora_pyro.inference.predictive import pyro_predictive
from bslora_pyro.scoring import ChoiceScorer


def main(args: argparse.Namespace) -> list[float]:
    pyro.set_rng_seed(0)
    backbone, tokenizer = load_backbone(args.model)
    scorer = ChoiceScorer(tokenizer, "choice_loglik", max_length=128)
    targets = ["q_proj", "v_proj", "lm_head"]
    adapter = AdapterConfig(r=8, alpha=16, target_modules=targets, layers="-2:")
    model = BayesianLora(backbone, scorer, adapter, prior="bernoulli", prior_kwargs={"p0": 0.5})
    train = load_task("arc_easy", "train", data_dir=args.data_dir, limit=args.questions)
    rates = lambda name, _: {"lr": args.lr_gates if "_guide" in name else args.lr}  # noqa: E731
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam(rates), ExactELBO())
    losses = []
    for _ in range(args.steps):
        index = torch.randint(len(train), (args.batch_size,))
        batch = scorer.encode([train[i] for i in index])
        losses.append(svi.step(batch, index, len(train), num_draws=2))
    probs = pyro_predictive(model, scorer.encode(train[:4]), num_samples=10)  # [M, B, C]
    print(f"loss {losses[0]:.1f} -> {losses[-1]:.1f}; predictive probs {tuple(probs.shape)}")
    return losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="hub id, folder or alias")
    parser.add_argument("--data-dir", help="local data folder (else BSLORA_DATA_DIR or the hub)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="of the LoRA factors")
    parser.add_argument("--lr-gates", type=float, default=1e-2, help="of the guide")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
