"""The paper's cost table on a GPU: train step, M-draw prediction and peak memory against LoRA.

Randomly initialised Llama models of real shapes (costs do not depend on the weights' values,
so nothing is downloaded): SmolLM2-135M, a ~1B Llama (Llama-3.2-1B's shape) and Llama-3.1-8B,
bf16 base with float32 adapters, r = 8 on q_proj, v_proj and lm_head in all blocks (the
paper's setting) and in the top ``--top-layers`` blocks, batch 4, prompts of up to 300 tokens,
answer-letter scoring. The measurements and the report are ``bench_cost.py``'s (peft's own
LoRA, the project's plain LoRA and Bayesian sparse LoRA in one process, interleaved warm
repeats, medians, ``torch.cuda.synchronize`` around every timing, peak memory from
``torch.cuda.max_memory_allocated``); this script adds the shapes and the GPU targets of
docs/benchmarks/cost.md, stated for the Llama-3.1-8B shape and printed as met or MISSED::

    python benchmarks/gpu_cost.py --out gpu_check_out/gpu_cost.json  # on a GPU
    python benchmarks/gpu_cost.py --cpu-smoke --out smoke.json       # a tiny shape, CPU

``--cpu-smoke`` runs one tiny shape on the CPU in a few seconds (the test suite does), so the
GPU path cannot rot between GPU sessions; its numbers are not measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cost  # noqa: E402  (the sibling script, not a package)
from bench_cost import Ratio, Spec  # noqa: E402

# LlamaConfig fields of each shape (the published configs; rope settings do not change cost)
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    "llama-1b": {  # Llama-3.2-1B
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "llama31-8b": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "smoke": {  # --cpu-smoke: 6 blocks, untied head, a vocabulary above the byte tokenizer's
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "tie_word_embeddings": False,
    },
}
TARGET_MODEL = "llama31-8b"  # the shape the GPU targets are stated for
TARGETS = ["q_proj", "v_proj", "lm_head"]
PAPER = "paper (Llama-3.1-8B, A40): train 0.46-0.72x LoRA, M=10 eval 4.4-7.8x, memory 1.19-1.22x"


def gpu_ratios(model: str) -> tuple[Ratio, ...]:
    """Issue 16's ratios, each labelled by its reference, with targets on ``model``."""
    return (
        Ratio("train step / project LoRA step", "train_bayes", "train_plain", {"all": 1.05},
              model=model),
        Ratio("train step / peft LoRA step", "train_bayes", "train_peft", {"all": 1.0},
              model=model),
        Ratio("peak memory / project LoRA", "mem_bayes", "mem_plain", {"all": 1.15},
              model=model),
        Ratio("peak memory / peft LoRA", "mem_bayes", "mem_peft", {"all": 1.15}, model=model),
        Ratio("M={M} predict / {M} sequential fwds", "predict_bayes", "predict_sequential",
              {"all": 0.5}, model=model),
        Ratio("M={M} predict / 1 peft LoRA fwd", "predict_bayes", "predict_peft",
              {"all": 4.4, "top": 1.5}, model=model),  # all: below the paper's 4.4-7.8x
        Ratio("M={M} predict / 1 uncached LoRA fwd", "predict_bayes", "predict_plain_uncached",
              {"top": 1.5}, model=model),
        Ratio("M={M} predict / 1 cached LoRA fwd", "predict_bayes", "predict_plain"),
        Ratio("train uncached / cached prefix", "train_no_prefix", "train_bayes"),
        Ratio("trainable params / project LoRA", "params_bayes", "params_plain"),
        Ratio("peft params / project LoRA", "params_peft", "params_plain"),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama31-8b,llama-1b,smollm2-135m",
                        help=f"subset of {sorted(SHAPES)} (the target shape first)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the tiny 'smoke' shape on the CPU, 1 timed step (tests)")
    bench_cost.add_measure_args(parser, steps=5, warmup=2, seq_len=300, device="cuda",
                                dtype="bfloat16", out="gpu_cost.json")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.models, args.device, args.threads = "smoke", "cpu", args.threads or 1
        args.steps, args.warmup, args.seq_len, args.batch_size = 1, 1, 48, 2
        args.draws, args.top_layers = 3, 2
    unknown = set(args.models.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (use --cpu-smoke on a CPU)")
    return args


def random_llama(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A Llama causal LM of shape ``name`` with random weights, built on ``device`` in
    ``dtype`` directly (an 8B model never exists in float32 or on the CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, pad_token_id=256)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def load_shape(name: str, device: torch.device, dtype: torch.dtype) -> Spec:
    """Shape ``name`` with the byte-level test tokenizer (letters are single tokens; any
    vocabulary of at least 259 entries holds its ids)."""
    from bslora_pyro.testing import tiny_tokenizer

    return Spec(name, random_llama(name, device, dtype), tiny_tokenizer("left"), "letter",
                list(TARGETS))


def target_lines(rows: list[dict[str, Any]], model: str, smoke: bool) -> list[str]:
    """One line per stated target: met or MISSED."""
    note = " (cpu smoke: a tiny shape, not a measurement)" if smoke else ""
    lines = [f"GPU cost targets on {model}{note}; {PAPER}"]
    for row in rows:
        if row["met"] is None:
            continue
        state = "met" if row["met"] else "MISSED"
        lines.append(f"  {row['layers']:<8} {row['metric']:<38} {row['value']:>7.3f} "
                     f"{row['target']:>8}  {state}")
    if len(lines) == 1:
        lines.append(f"  none: {model} was not measured in this run")
    return lines


def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.models.split(","):  # the JSON holds every finished model, should a
        part, device, dtype = bench_cost.measure_models([name], load_shape, args)  # limit hit
        results.update(part)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"partial": True, "results": results}, indent=2))
    target = "smoke" if args.cpu_smoke else TARGET_MODEL
    out = bench_cost.report(results, gpu_ratios(target), args, device, dtype)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["environment"].update(cuda=torch.version.cuda, gpu_mb=props.total_memory / 2**20)
    out["targets"] = target_lines(out["ratios"], target, args.cpu_smoke)
    print("\n" + "\n".join(out["targets"]))
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(parse_args())
