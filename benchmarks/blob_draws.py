"""Cost of BLoB's per-example A draws against one shared draw per batch (and flipout).

Two measurements, each timed in interleaved rounds so that machine load hits every variant
alike (median seconds, ratio to the shared draw):

* one adapted ``576 -> 576`` layer (SmolLM2-135M's q_proj) on ``--batch`` questions of
  ``--seq-len`` tokens, forward + backward with A sampled from ``N(mu, (rho^2)^2)``: one
  A for the batch (``shared``), one A per question (``per_example``, the library's
  ``sampled_A [B, r, in]``) and BLoB's flipout (one noise matrix, random signs per token on
  the input and on the rank dimension, written out here for the comparison);
* a whole training step (ELBO, backward, AdamW) of ``BlobLora`` with ``per_example`` on
  and off, on the tiny test Llama and on a random-init Llama with SmolLM2-135M's shapes
  (``--blocks`` blocks; q_proj, v_proj and lm_head adapted; ``choice_loglik`` scoring)::

    python benchmarks/blob_draws.py --steps 15 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cost import make_examples, time_interleaved, train_step_fn  # noqa: E402
from gpu_cost import SHAPES  # noqa: E402

from bslora_pyro.adapter import AdapterConfig, GatedLoraLinear  # noqa: E402
from bslora_pyro.methods import build_method  # noqa: E402
from bslora_pyro.scoring import ChoiceScorer  # noqa: E402
from bslora_pyro.testing import tiny_llama, tiny_tokenizer  # noqa: E402

CPU = torch.device("cpu")


def layer_fns(batch: int, seq_len: int, width: int, r: int) -> dict[str, Callable[[], None]]:
    """Forward + backward of one adapted layer under each way of drawing A."""
    torch.manual_seed(0)
    layer = GatedLoraLinear(nn.Linear(width, width).requires_grad_(False), r, 2.0 * r)
    nn.init.normal_(layer.lora_B, std=0.02)
    rho = nn.Parameter(torch.full((r, width), 0.05))
    x = torch.randn(batch, seq_len, width)

    def sampled(groups: int) -> Callable[[], None]:
        def run() -> None:
            noise = torch.randn(groups, r, width)
            layer.sampled_A = layer.lora_A + rho.square() * noise
            layer(x).sum().backward()
            layer.sampled_A = None
        return run

    def flipout() -> None:
        noise = rho.square() * torch.randn(r, width)
        signs_in = torch.empty(batch, seq_len, width).uniform_(-1, 1).sign()
        signs_rank = torch.empty(batch, seq_len, r).uniform_(-1, 1).sign()
        out = layer(x) + layer.scaling * nn.functional.linear(
            nn.functional.linear(x * signs_in, noise) * signs_rank, layer.lora_B
        )
        out.sum().backward()

    return {"shared": sampled(1), "per_example": sampled(batch), "flipout": flipout}


def step_fns(model: nn.Module, mode: str, batch_size: int, seq_len: int,
             layers: str | None) -> dict[str, Callable[[], float]]:
    """One ``BlobLora`` training step with one A per batch and with one A per question."""
    tokenizer = tiny_tokenizer("left")
    adapter = AdapterConfig(r=8, alpha=16.0, target_modules=["q_proj", "v_proj", "lm_head"],
                            layers=layers)
    scorer = ChoiceScorer(tokenizer, mode, max_length=seq_len + 16)
    batch = scorer.encode(make_examples(tokenizer, batch_size, seq_len))
    fns = {}
    for name, per_example in (("shared", False), ("per_example", True)):
        torch.manual_seed(0)
        method = build_method("blob", copy.deepcopy(model), scorer, adapter,
                              {"per_example": per_example})
        fns[name] = train_step_fn(method, batch, 1000)
    return fns


def report(title: str, times: dict[str, list[float]]) -> None:
    ref = statistics.median(times["shared"])
    print(title)
    for name, samples in times.items():
        t = statistics.median(samples)
        print(f"  {name:12s} {1e3 * t:9.2f} ms  {t / ref:6.3f}x shared")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: keep)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run = lambda fns: time_interleaved(fns, args.steps, args.warmup, CPU)  # noqa: E731
    report(f"one 576 -> 576 layer, r = 8, {args.batch} x {args.seq_len} tokens, fwd + bwd",
           run(layer_fns(args.batch, args.seq_len, 576, 8)))
    report(f"training step, tiny test Llama, batch {args.batch}",
           run(step_fns(tiny_llama(seed=0), "choice_loglik", args.batch, 48, None)))
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**SHAPES["smollm2-135m"], "num_hidden_layers": args.blocks}
    torch.manual_seed(0)
    smol = LlamaForCausalLM(LlamaConfig(**shape, pad_token_id=256)).eval()
    report(f"training step, SmolLM2-135M shapes ({args.blocks} blocks, random init), "
           f"batch {args.batch}, up to {args.seq_len} tokens",
           run(step_fns(smol, "choice_loglik", args.batch, args.seq_len, None)))


if __name__ == "__main__":
    main()
