"""Cost of each guide of ``bslora_pyro/models/guides/`` against the mean-field guide.

One process builds ``BayesianLora`` once per guide on the same backbone, batch and adapted
layers (the quick start's: q_proj, v_proj and lm_head of the top ``--top-layers`` blocks),
then times, interleaved round by round so that machine load hits every guide alike, a
training step (loss, backward, AdamW; S = 1) and an M-draw prediction. Prints the medians
and each guide's ratio to the mean-field guide, and writes JSON::

    python benchmarks/bench_guides.py --models smollm2 --steps 5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cost import (  # noqa: E402  (the shared measuring machinery)
    MODELS,
    adapter_config,
    add_measure_args,
    load_spec,
    make_examples,
    resolve_device,
    stats,
    time_interleaved,
    train_step_fn,
)

from bslora_pyro.bayesian_lora import BayesianLora  # noqa: E402
from bslora_pyro.models.guides import available_guides  # noqa: E402
from bslora_pyro.scoring import ChoiceScorer  # noqa: E402

REFERENCE = "mean_field"


def build(spec, guide: str, layers: str, rank: int, heads: list[str]) -> BayesianLora:
    """``BayesianLora`` with ``guide`` on a fresh copy of the backbone."""
    adapter = adapter_config(spec, layers, rank)
    adapter = dataclasses.replace(adapter, target_modules=[*adapter.target_modules, *heads])
    scorer = ChoiceScorer(spec.tokenizer, spec.mode, max_length=512)
    return BayesianLora(copy.deepcopy(spec.model), scorer, adapter,
                        guide={"name": guide, "temperature": 0.5})


def measure(spec, guides: list[str], args, device: torch.device) -> dict[str, Any]:
    examples = make_examples(spec.tokenizer, args.batch_size, args.seq_len)
    batch = ChoiceScorer(spec.tokenizer, spec.mode, max_length=512).encode(examples).to(device)
    heads = ["lm_head"] if spec.mode != "encoder" else []
    layers = f"-{min(args.top_layers, spec.num_blocks - 1)}:"
    train, predict = {}, {}
    for guide in guides:
        torch.manual_seed(args.seed)
        model = build(spec, guide, layers, args.rank, heads)
        train[guide] = train_step_fn(model, batch, 1000)
        predict[guide] = lambda m=model: m.predict_logits(batch, args.draws)
    return {"train": time_interleaved(train, args.steps, args.warmup, device),
            "predict": time_interleaved(predict, args.steps, args.warmup, device),
            "layers": layers, "targets": spec.targets + heads}


def table(name: str, result: dict[str, Any]) -> str:
    lines = [f"{name}, adapted {result['layers']} of {', '.join(result['targets'])}",
             f"{'guide':16s} {'train ms':>9s} {'/ mean_field':>13s} "
             f"{'predict ms':>11s} {'/ mean_field':>13s}"]
    ref = {k: statistics.median(result[k][REFERENCE]) for k in ("train", "predict")}
    for guide in result["train"]:
        t = statistics.median(result["train"][guide])
        p = statistics.median(result["predict"][guide])
        lines.append(f"{guide:16s} {1e3 * t:9.1f} {t / ref['train']:13.3f} "
                     f"{1e3 * p:11.1f} {p / ref['predict']:13.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2", help=f"subset of {MODELS}")
    parser.add_argument("--guides", default=",".join(available_guides()),
                        help="comma-separated guide names (the mean-field guide is always in)")
    add_measure_args(parser, out="bench_guides.json", steps=5)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args)
    guides = [REFERENCE] + [g for g in args.guides.split(",") if g and g != REFERENCE]
    unknown = sorted(set(guides) - set(available_guides()))
    if unknown:
        raise SystemExit(f"unknown guide(s) {unknown}; choose from {available_guides()}")
    results = {}
    for name in args.models.split(","):
        result = measure(load_spec(name, device, dtype), guides, args, device)
        print(table(name, result), flush=True)
        results[name] = {**result, "summary": {
            kind: {g: stats(v) for g, v in result[kind].items()} for kind in ("train", "predict")
        }}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": str(device), "dtype": str(dtype),
                                          "args": vars(args), "results": results}, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main(parse_args())
