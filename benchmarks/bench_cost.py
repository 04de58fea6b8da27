"""Cost of Bayesian sparse LoRA against plain LoRA on the same model, batch and layers.

For each model and each adapter placement (all blocks; the top ``--top-layers`` blocks) three
backbone copies get peft's own LoRA (``peft.get_peft_model`` on the same modules, the
reference a user without this library runs), the project's plain LoRA (``PlainLora``, MLE) and
Bayesian sparse LoRA (``BayesianLora``, S = 1). After ``--warmup`` untimed rounds, ``--steps``
rounds are timed, the measurements of a round interleaved so that machine load affects every
variant alike:

* training step (loss, backward, AdamW) of peft LoRA, of plain LoRA, of ``BayesianLora``
  (frozen prefix cached across steps: warm after the warm-up round) and of ``BayesianLora``
  without the frozen prefix (full forward every step);
* one peft-LoRA forward, one plain-LoRA forward with the frozen-prefix cache (cached: only the
  adapted top runs once the cache is warm) and without it (uncached: the full forward, as a
  user without the cache runs it), an M-draw ``BayesianLora`` prediction (one batched forward,
  frozen prefix from the cache) and M sequential single-draw full forwards.

A third section (``--sections sentiment``) times prediction on a sentiment task in
``choice_loglik`` mode, the setting of a review classifier: each of ``--reviews`` movie
reviews is scored by the log-likelihood of " negative" and " positive" after the
``movie_reviews`` task's prompt (``Movie review: {text}\nSentiment:``), with r-``--rank``
LoRA on q_proj, v_proj of the
top ``--sentiment-top`` blocks and on lm_head. Timed, both with the frozen-prefix cache warm
(filled by the untimed warm-up round): one pass of the project's plain LoRA (MLE) over the
reviews, and M-draw Bayesian sparse LoRA prediction over the same reviews; also the part of
the MLE pass that every draw shares (serving the block-k states from the cache, packing the
two choices' rows). The floor of the M-draw pass is that shared part once plus M times the
rest of the MLE pass (the adapted blocks and the head on the continuation tokens). With
``--cold`` both passes are also timed with an empty cache (the frozen blocks run in each):
a cold M-draw pass against a warm MLE pass counts the frozen prefix in one and not the
other, which is not the comparison the warm ratio makes. The
reviews are the test split of the ``movie_reviews`` task where it can be loaded, else
synthetic review-like snippets of 15 to 35 words.

Every ratio names its reference (see ``RATIOS``). Peak memory of a method: what building it
(its backbone copy included) and two training steps add to the peak (on GPU
``max_memory_allocated`` above the allocation before; on CPU peak RSS above the RSS before,
read from /proc after resetting the high-water mark). Prints the timings (median, min, max) and
the ratios against the project's cost targets (the list in docs/benchmarks/cost.md), and writes everything to ``--out`` as JSON::

    python benchmarks/bench_cost.py --models tiny,smollm2 --steps 5
    python benchmarks/bench_cost.py --models smollm2 --sections sentiment --reviews 400

``benchmarks/gpu_cost.py`` runs the same measurements on random-init model shapes on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from bslora_pyro.adapter import AdapterConfig, find_targets
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import loglik_pairs
from bslora_pyro.methods.base import PlainLora
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.scoring.prefix import PrefixCache

MODELS = ("tiny", "minilm", "smollm2")
WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
CHOICE_WORDS = ("red", "blue", "green", "yellow", "black")
KINDS = ("peft", "plain", "bayes")  # peft's LoRA, the project's plain LoRA, Bayesian sparse
SECTIONS = ("cost", "sentiment")
SENTIMENT_TARGETS = ["q_proj", "v_proj", "lm_head"]
REVIEW_WORDS = {
    "openers": ("this film", "the movie", "the director's latest", "a sequel that", "the script",
                "its cast", "the story", "every scene"),
    "verbs": ("is", "feels", "remains", "turns out", "plays as", "comes across as", "seems"),
    "words": ("a", "warm", "clumsy", "funny", "tedious", "sharp", "beautifully", "shot", "and",
              "with", "dull", "moving", "performances", "that", "never", "quite", "land",
              "smart", "dialogue", "overlong", "but", "charming", "mess", "of", "ideas",
              "the", "ending", "earns", "its", "tears", "lazy", "thriller", "gorgeous"),
}


@dataclass(frozen=True)
class Ratio:
    """A ratio of medians ``num / den``, its label naming the reference, and its targets.

    ``targets`` maps a placement (``"all"``, ``"top"``, or ``"*"`` for both) to the target
    stated for it; ``min_blocks`` and ``model`` restrict the models it is stated for
    (``None``: any). ``{M}`` in the label is the number of draws.
    """

    label: str
    num: str
    den: str
    targets: dict[str, float] = field(default_factory=dict)
    direction: str = "<="
    min_blocks: int = 0
    model: str | None = None

    def target(self, model: str, placement: str, num_blocks: int) -> float | None:
        """The target stated for this model and placement, or None."""
        if self.model not in (None, model) or num_blocks < self.min_blocks:
            return None
        return self.targets.get(placement, self.targets.get("*"))


# the CPU targets of docs/benchmarks/cost.md (top 4 of 30 blocks: >= 30 blocks). The M-draw prediction target was
# stated against a plain-LoRA forward that ran the whole model: the uncached reference.
RATIOS = (
    Ratio("train step / project LoRA step", "train_bayes", "train_plain", {"*": 1.10}),
    Ratio("train step / peft LoRA step", "train_bayes", "train_peft"),
    Ratio("peak memory / project LoRA", "mem_bayes", "mem_plain", {"*": 1.15}),
    Ratio("peak memory / peft LoRA", "mem_bayes", "mem_peft"),
    Ratio("M={M} predict / 1 cached LoRA fwd", "predict_bayes", "predict_plain"),
    Ratio("M={M} predict / 1 uncached LoRA fwd", "predict_bayes", "predict_plain_uncached",
          {"top": 3.0}, min_blocks=30),
    Ratio("M={M} predict / 1 peft LoRA fwd", "predict_bayes", "predict_peft"),
    Ratio("M={M} predict / {M} sequential fwds", "predict_bayes", "predict_sequential",
          {"all": 0.9}),
    Ratio("train uncached / cached prefix", "train_no_prefix", "train_bayes", {"top": 4.0},
          ">=", min_blocks=30),
    # M = 10 prediction on the sentiment task at most 12x a cached MLE pass, top 4
    # of 30 blocks adapted; both passes warm
    Ratio("M={M} sentiment / cached MLE pass", "predict_sent_bayes", "predict_sent_mle",
          {"sent4": 12.0}, min_blocks=30),
    Ratio("M={M} sentiment / cached MLE, CPU time", "predict_sent_bayes_cpu",
          "predict_sent_mle_cpu"),
    Ratio("floor / cached MLE pass", "predict_sent_floor", "predict_sent_mle"),
    Ratio("M={M} sentiment / its floor", "predict_sent_bayes", "predict_sent_floor"),
    Ratio("M={M} sentiment cold / cold MLE pass", "predict_sent_bayes_cold",
          "predict_sent_mle_cold"),
    Ratio("M={M} sentiment cold / cached MLE pass", "predict_sent_bayes_cold",
          "predict_sent_mle"),
    Ratio("trainable params / project LoRA", "params_bayes", "params_plain"),
    Ratio("peft params / project LoRA", "params_peft", "params_plain"),
)


# ---------------------------------------------------------------------------- arguments


def add_measure_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The measurement options shared with ``gpu_cost.py`` (``defaults`` override ours)."""
    values = {"steps": 5, "warmup": 1, "batch_size": 4, "seq_len": 64, "draws": 10,
              "top_layers": 4, "rank": 8, "device": "auto", "dtype": "auto", "threads": 0,
              "seed": 0, "out": "bench_cost.json", **defaults}
    add = parser.add_argument
    add("--steps", type=int, default=values["steps"], help="timed repetitions")
    add("--warmup", type=int, default=values["warmup"], help="untimed repetitions first")
    add("--batch-size", type=int, default=values["batch_size"], help="questions per batch")
    add("--seq-len", type=int, default=values["seq_len"], help="longest prompt, tokens")
    add("--draws", type=int, default=values["draws"], help="M, Monte Carlo draws")
    add("--top-layers", type=int, default=values["top_layers"], help="blocks in the 'top' setting")
    add("--rank", type=int, default=values["rank"])
    add("--device", default=values["device"], help="auto, cpu or cuda")
    add("--dtype", default=values["dtype"], help="auto (bf16 on CUDA), float32, bfloat16")
    add("--threads", type=int, default=values["threads"], help="torch CPU threads (0: default)")
    add("--seed", type=int, default=values["seed"])
    add("--out", default=values["out"], help="JSON results file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,minilm,smollm2", help=f"subset of {MODELS}")
    parser.add_argument("--sections", default="cost,sentiment", help=f"subset of {SECTIONS}")
    parser.add_argument("--reviews", type=int, default=64, help="sentiment: reviews scored")
    parser.add_argument("--sentiment-batch-size", type=int, default=8,
                        help="sentiment: reviews per batch (predict.batch_size)")
    parser.add_argument("--sentiment-top", default="4",
                        help="sentiment: adapted top blocks, one setting per comma-separated value")
    parser.add_argument("--cold", action="store_true",
                        help="sentiment: also time both passes with an empty prefix cache")
    add_measure_args(parser)
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    sections = set(args.sections.split(","))
    if not sections or sections - set(SECTIONS):
        parser.error(f"--sections {args.sections!r}: choose from {SECTIONS}")
    try:
        args.sentiment_top = [int(value) for value in args.sentiment_top.split(",")]
    except ValueError:
        parser.error(f"--sentiment-top {args.sentiment_top!r}: comma-separated block counts")
    if args.reviews < 1 or args.sentiment_batch_size < 1 or min(args.sentiment_top) < 1:
        parser.error("--reviews, --sentiment-batch-size and --sentiment-top must be positive")
    if "sentiment" in sections and args.warmup < 1:
        parser.error("--warmup must be at least 1 for the sentiment section (it warms the cache)")
    return args


def resolve_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype)


# ---------------------------------------------------------------------------- models and data


@dataclass
class Spec:
    """A backbone with its tokenizer, scoring mode and adapter targets."""

    name: str
    model: Any
    tokenizer: Any
    mode: str
    targets: list[str]
    heads: list[str] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return int(self.model.config.num_hidden_layers)


def load_spec(name: str, device: torch.device, dtype: torch.dtype) -> Spec:
    """The frozen-to-be backbone ``name`` on ``device``."""
    if name == "tiny":
        from bslora_pyro.testing import tiny_llama, tiny_tokenizer

        model = tiny_llama(num_layers=8, hidden=64).to(device=device, dtype=dtype)
        return Spec(name, model, tiny_tokenizer("left"), "letter", ["q_proj", "v_proj"])
    from bslora_pyro.backbones import load_backbone

    if name == "minilm":
        model, tok = load_backbone("minilm", task="multiple_choice", dtype=dtype, device=device)
        return Spec(name, model, tok, "encoder", ["query", "value"], ["classifier"])
    model, tok = load_backbone("smollm2-135m", dtype=dtype, device=device)
    return Spec(name, model, tok, "letter", ["q_proj", "v_proj"])


def _prompt(question: str, choices: tuple[str, ...]) -> str:
    listed = " ".join(f"{letter}. {c}." for letter, c in zip("ABCD", choices, strict=False))
    return f"Question: {question} Choices: {listed} Answer:"


def _question(tokenizer: Any, target: int, index: int) -> str:
    """A question whose prompt has about ``target`` tokens."""
    words: list[str] = []
    while True:
        words.append(WORDS[(index + len(words)) % len(WORDS)])
        text = " ".join(words) + "?"
        if len(tokenizer(_prompt(text, CHOICE_WORDS[:4]))["input_ids"]) >= target:
            return text


def make_examples(tokenizer: Any, batch_size: int, seq_len: int) -> list[MultipleChoiceExample]:
    """``batch_size`` four-choice questions of mixed lengths up to ``seq_len`` tokens."""
    out = []
    for i in range(batch_size):
        question = _question(tokenizer, max(8, seq_len - 6 * i), i)
        choices = CHOICE_WORDS[i % 2 : i % 2 + 4]
        out.append(
            MultipleChoiceExample(
                uid=f"bench{i}",
                question=question,
                choices=choices,
                label=i % 4,
                letter_prompt=_prompt(question, choices),
                loglik_pairs=tuple(loglik_pairs(question, choices)),
            )
        )
    return out


# ---------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    steps: int,
    warmup: int,
    device: torch.device,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each function in ``steps`` rounds (one call of each per round, in turn)
    after ``warmup`` untimed rounds; ``cpu_times`` (when given) gets this process's CPU
    seconds of each call, which other jobs on a shared CPU disturb less than wall time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - cpu)
    return times


def _proc_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_cpu_peak() -> int:
    """Return unused heap to the OS, reset the RSS high-water mark, return RSS (kB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _proc_kb("VmRSS:")


def measure_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and the memory (MB) it adds to the peak (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        result = fn()
        return result, (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    try:
        baseline = _reset_cpu_peak()
    except (OSError, KeyError):  # no /proc: the (unresettable) ru_maxrss
        import resource

        result = fn()
        return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = fn()
    return result, (_proc_kb("VmHWM:") - baseline) / 1024


def stats(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


# ---------------------------------------------------------------------------- one setting


class PeftLora:
    """peft's own LoRA on the modules the project adapts, with the bench's method interface.

    Trained by the cross-entropy of the choice logits; scored by the same ``ChoiceScorer``
    without frozen-prefix reuse (the full forward a user without this library runs). peft
    keeps the adapters in float32 on a bf16 base (``autocast_adapter_dtype``), as we do.
    """

    def __init__(self, backbone: Any, tokenizer: Any, mode: str, config: AdapterConfig) -> None:
        from peft import LoraConfig, get_peft_model

        names = find_targets(backbone, config)
        lora = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=0.0,
            target_modules="|".join(re.escape(name) for name in names),
            modules_to_save=list(config.trainable_modules) or None,
        )
        self.backbone = get_peft_model(backbone, lora).get_base_model()
        self.scorer = ChoiceScorer(tokenizer, mode, max_length=512, reuse_prefix=False)

    def factor_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.backbone.named_parameters() if p.requires_grad}

    def param_groups(self, lr_factors: float, lr_gates: float) -> list[dict[str, Any]]:
        return [{"params": list(self.factor_parameters().values()), "lr": lr_factors}]

    def training_loss(self, batch, index, num_data: int, num_draws: int, per_example: bool):
        logits = self.scorer.logits(self.backbone, batch, 1)[0]
        return SimpleNamespace(loss=F.cross_entropy(logits, batch.labels))

    @torch.no_grad()
    def predict_logits(self, batch) -> torch.Tensor:
        return self.scorer.logits(self.backbone, batch, 1)


def adapter_config(spec: Spec, layers: str | None, rank: int) -> AdapterConfig:
    return AdapterConfig(
        r=rank,
        alpha=2.0 * rank,
        target_modules=list(spec.targets),
        layers=layers,
        trainable_modules=list(spec.heads),
    )


def build_method(spec: Spec, kind: str, layers: str | None, rank: int):
    """A fresh copy of the backbone with peft, plain or Bayesian LoRA and its own scorer."""
    backbone = copy.deepcopy(spec.model)
    config = adapter_config(spec, layers, rank)
    if kind == "peft":
        return PeftLora(backbone, spec.tokenizer, spec.mode, config)
    scorer = ChoiceScorer(spec.tokenizer, spec.mode, max_length=512)
    if kind == "plain":
        return PlainLora(backbone, scorer, config)
    return BayesianLora(backbone, scorer, config)


def train_step_fn(method, batch, num_data: int) -> Callable[[], float]:
    """One optimizer step on ``batch`` (eval-mode backbone: no dropout, same for both)."""
    groups = [g for g in method.param_groups(1e-4, 1e-2) if g["params"]]
    optimizer = torch.optim.AdamW(groups)
    index = torch.arange(batch.num_examples, device=batch.device)

    def step() -> float:
        terms = method.training_loss(batch, index, num_data, 1, False)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        return terms.loss.item()

    return step


def without_prefix(method, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with the scorer's frozen-prefix reuse switched off."""

    def run() -> Any:
        method.scorer.reuse_prefix = False
        try:
            return fn()
        finally:
            method.scorer.reuse_prefix = True

    return run


def sequential_fn(method, batch, draws: int) -> Callable[[], torch.Tensor]:
    """M single-draw full forwards: what rerunning the model per sample costs."""

    @torch.no_grad()
    def run() -> torch.Tensor:
        gates = method.sample_gates(draws)
        outs = []
        for d in range(draws):
            method.set_gates({k: v[d] for k, v in gates.items()})
            outs.append(method.scorer.logits(method.backbone, batch, 1))
        return torch.cat(outs)

    return without_prefix(method, run)


def trainable_count(method) -> int:
    params = list(method.factor_parameters().values())
    if hasattr(method, "gate_parameters"):
        params += list(method.gate_parameters().values())
    return sum(p.numel() for p in params)


def prepare(spec: Spec, kind: str, layers: str | None, batch_cpu, args, device):
    """A method with its batch and a training step that has run twice."""
    torch.manual_seed(args.seed)
    method = build_method(spec, kind, layers, args.rank)
    batch = batch_cpu.to(device)
    step = train_step_fn(method, batch, 1000)
    step()
    step()
    return method, batch, step


def memory_mb(spec: Spec, kind: str, layers: str | None, batch_cpu, args, device) -> float:
    """What building a method and two training steps add to the peak memory (measured after
    both methods were built once, so one-time process allocations count for neither)."""
    result, memory = measure_peak(
        lambda: prepare(spec, kind, layers, batch_cpu, args, device), device
    )
    del result
    gc.collect()
    return memory


def run_setting(spec: Spec, layers: str | None, args, device: torch.device) -> dict[str, Any]:
    """All measurements for one adapter placement."""
    examples = make_examples(spec.tokenizer, args.batch_size, args.seq_len)
    batch_cpu = ChoiceScorer(spec.tokenizer, spec.mode, max_length=512).encode(examples)
    peft, batch, peft_step = prepare(spec, "peft", layers, batch_cpu, args, device)
    plain, _, plain_step = prepare(spec, "plain", layers, batch_cpu, args, device)
    bayes, _, bayes_step = prepare(spec, "bayes", layers, batch_cpu, args, device)
    out: dict[str, Any] = {
        "rows_x_width": list(batch.input_ids.reshape(-1, batch.input_ids.shape[-1]).shape),
        "tokens": int(batch.attention_mask.sum()),
        "base_mb": sum(p.numel() * p.element_size() for p in spec.model.parameters()) / 2**20,
    }
    for kind, method in zip(KINDS, (peft, plain, bayes), strict=True):
        out[f"mem_{kind}"] = memory_mb(spec, kind, layers, batch_cpu, args, device)
        out[f"params_{kind}"] = trainable_count(method)
    train = {
        "train_peft": peft_step,
        "train_plain": plain_step,
        "train_bayes": bayes_step,
        "train_no_prefix": without_prefix(bayes, bayes_step),
    }
    predict = {
        "predict_peft": lambda: peft.predict_logits(batch),
        "predict_plain": lambda: plain.predict_logits(batch),
        "predict_plain_uncached": without_prefix(plain, lambda: plain.predict_logits(batch)),
        "predict_bayes": lambda: bayes.predict_logits(batch, args.draws),
        "predict_sequential": sequential_fn(bayes, batch, args.draws),
    }
    out.update(time_interleaved(train, args.steps, args.warmup, device))
    out.update(time_interleaved(predict, args.steps, args.warmup, device))
    return out


# ---------------------------------------------------------------------------- sentiment


def synthetic_reviews(count: int, seed: int) -> list[str]:
    """``count`` review-like snippets of 15 to 35 words (seeded)."""
    rng = torch.Generator().manual_seed(seed)
    pick = lambda words: words[int(torch.randint(len(words), (1,), generator=rng))]  # noqa: E731
    reviews = []
    for _ in range(count):
        size = int(torch.randint(12, 33, (1,), generator=rng))
        words = [pick(REVIEW_WORDS["words"]) for _ in range(size)]
        opener = f"{pick(REVIEW_WORDS['openers'])} {pick(REVIEW_WORDS['verbs'])}"
        reviews.append(f"{opener} {' '.join(words)}.".capitalize())
    return reviews


def review_example(uid: str, text: str, label: int) -> MultipleChoiceExample:
    """A synthetic review as the ``movie_reviews`` task builds one (its prompts)."""
    from bslora_pyro.data.tasks.sentiment import sentiment_example

    return sentiment_example(uid, text, label)


def sentiment_examples(count: int, seed: int) -> tuple[list[MultipleChoiceExample], str]:
    """The first ``count`` reviews of the ``movie_reviews`` test split where that task loads,
    else synthetic ones; and which of the two."""
    try:
        from bslora_pyro.data import load_task

        examples = load_task("movie_reviews", "test", limit=count)
    except Exception as error:  # an unknown task, a missing file or package: synthetic text
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"sentiment: movie_reviews not loaded ({reason}); synthetic reviews")
    else:
        if len(examples) == count:
            return examples, "movie_reviews test"
        print(f"sentiment: movie_reviews has {len(examples)} test reviews; synthetic reviews")
    texts = synthetic_reviews(count, seed)
    return [review_example(f"review{i}", t, i % 2) for i, t in enumerate(texts)], "synthetic"


def shared_fn(method, batches) -> Callable[[], None]:
    """What every draw of a batch shares: the scorer's plan (block-k states from the prefix
    cache, the packed rows and their block context), the part of a pass the draws do not
    repeat."""

    @torch.no_grad()
    def run() -> None:
        for batch in batches:
            method.scorer._plan(method.backbone, batch)

    return run


def with_empty_cache(method, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with an empty prefix cache of the same budget (a cold pass: every batch
    runs its frozen prefix), the warm cache put back afterwards."""

    def run() -> Any:
        warm = method.scorer.prefix_cache
        method.scorer.prefix_cache = PrefixCache(warm.budget_bytes / 2**20, warm.device)
        try:
            return fn()
        finally:
            method.scorer.prefix_cache = warm

    return run


def measure_sentiment(spec: Spec, top: int, args, device: torch.device) -> dict[str, Any]:
    """Warm cached MLE pass, M-draw Bayesian prediction and their shared part over the same
    reviews, with the top ``top`` blocks adapted (see the module docstring)."""
    examples, source = sentiment_examples(args.reviews, args.seed)
    config = AdapterConfig(r=args.rank, alpha=2.0 * args.rank,
                           target_modules=list(SENTIMENT_TARGETS), layers=f"-{top}:")
    start = spec.num_blocks - top
    methods = {}
    for kind, build in (("mle", PlainLora), ("bayes", BayesianLora)):
        torch.manual_seed(args.seed)
        scorer = ChoiceScorer(spec.tokenizer, "choice_loglik", max_length=512, prefix_start=start)
        methods[kind] = build(copy.deepcopy(spec.model), scorer, config).eval()
    scorer = methods["mle"].scorer
    size = args.sentiment_batch_size
    batches = [scorer.encode(examples[i : i + size]).to(device)
               for i in range(0, len(examples), size)]
    mle, bayes = methods["mle"], methods["bayes"]

    @torch.no_grad()
    def mle_pass() -> None:
        for batch in batches:
            mle.predict_logits(batch)

    @torch.no_grad()
    def bayes_pass() -> None:
        for batch in batches:
            bayes.predict_logits(batch, args.draws)

    fns = {"predict_sent_mle": mle_pass, "predict_sent_bayes": bayes_pass,
           "predict_sent_shared": shared_fn(mle, batches)}
    if args.cold:
        fns["predict_sent_mle_cold"] = with_empty_cache(mle, mle_pass)
        fns["predict_sent_bayes_cold"] = with_empty_cache(bayes, bayes_pass)
    cpu: dict[str, list[float]] = {}
    out: dict[str, Any] = time_interleaved(fns, args.steps, args.warmup, device, cpu)
    out.update({f"{name}_cpu": values for name, values in cpu.items()})
    for suffix in ("", "_cpu"):
        pairs = zip(out[f"predict_sent_shared{suffix}"], out[f"predict_sent_mle{suffix}"],
                    strict=True)
        out[f"predict_sent_floor{suffix}"] = [
            shared + args.draws * (total - shared) for shared, total in pairs
        ]
    rows = sum(int(b.choice_mask.sum()) for b in batches)
    out.update({
        "reviews": len(examples),
        "source": source,
        "tokens_per_review": statistics.median(  # context and a continuation, per question
            int(mask.sum()) for b in batches
            for mask in b.attention_mask.reshape(b.num_examples, -1, b.attention_mask.shape[-1])[:, 0]
        ),
        "cached_rows": {k: len(m.scorer.prefix_cache) for k, m in methods.items()},
        "rows": rows,
        "blocks": f"sent{top}/{spec.num_blocks}",
        "num_blocks": spec.num_blocks,
    })
    if any(n != rows for n in out["cached_rows"].values()):  # a timed pass ran the prefix
        raise RuntimeError(f"prefix cache not warm: {out['cached_rows']} of {rows} rows")
    return out


def measure_sentiment_models(
    names: Sequence[str], load: Callable[[str, torch.device, torch.dtype], Spec], args
) -> tuple[dict[str, dict[str, dict[str, Any]]], torch.device, torch.dtype]:
    """The sentiment section for every causal LM among ``names`` (encoders are skipped)."""
    device, dtype = _threads_and_device(args)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        spec = load(name, device, dtype)
        if spec.mode != "letter":  # not a causal LM: no continuation log-likelihoods
            continue
        results[name] = {}
        for top in args.sentiment_top:
            top = min(top, spec.num_blocks - 1)
            results[name][f"sent{top}"] = measure_sentiment(spec, top, args, device)
        del spec
        gc.collect()
    return results, device, dtype


# ---------------------------------------------------------------------------- report


def _median(value: Any) -> float:
    return statistics.median(value) if isinstance(value, list) else value


def ratio_rows(
    results: dict[str, dict[str, dict[str, Any]]], ratios: Sequence[Ratio], draws: int
) -> list[dict[str, Any]]:
    """One row per model, placement and ratio: its value and, where stated, the target met."""
    rows = []
    for model, settings in results.items():
        for placement, values in settings.items():
            for ratio in ratios:
                a, b = values.get(ratio.num), values.get(ratio.den)
                if a is None or b is None:
                    continue
                a, b = _median(a), _median(b)
                value = a / b if b else float("nan")
                target = ratio.target(model, placement, values.get("num_blocks", 0))
                met = None
                if target is not None:
                    met = value <= target if ratio.direction == "<=" else value >= target
                rows.append(
                    {
                        "model": model,
                        "layers": values.get("blocks", placement),
                        "metric": ratio.label.format(M=draws),
                        "value": value,
                        "target": f"{ratio.direction} {target}" if target is not None else "",
                        "met": met,
                    }
                )
    return rows


def _timing_lines(model: str, label: str, values: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in values.items():
        if key.startswith(("train", "predict")):
            s = {k: v * 1000 for k, v in stats(value).items()}
            lines.append(
                f"{model:<12} {label:<8} {key + ' ms':<31} "
                f"{s['median']:>9.1f} {s['min']:>9.1f} {s['max']:>9.1f}"
            )
        elif key.startswith(("mem", "base_mb")):
            name = key if key.endswith("_mb") else key + " MB"
            lines.append(f"{model:<12} {label:<8} {name:<31} {value:>9.1f} {'-':>9} {'-':>9}")
    return lines


def format_tables(results: dict, ratios: list[dict], env: dict[str, Any]) -> str:
    args = env["args"]
    lines = [
        f"device={env['device']} ({env['device_name']}) dtype={env['dtype']} "
        f"threads={env['threads']} B={args['batch_size']} T<={args['seq_len']} "
        f"M={args['draws']} r={args['rank']} steps={args['steps']} warmup={args['warmup']}",
    ]
    for model, settings in results.items():
        for values in settings.values():
            if "source" in values:  # a sentiment setting: its own data
                lines.append(
                    f"{model} {values['blocks']}: {values['reviews']} reviews "
                    f"({values['source']}, median {values['tokens_per_review']} tokens with "
                    f"the prompt), {args.get('sentiment_batch_size')} per batch, "
                    f"choice_loglik, LoRA on {', '.join(SENTIMENT_TARGETS)}"
                )
    lines += [
        "",
        f"{'model':<12} {'layers':<8} {'measure':<31} {'median':>9} {'min':>9} {'max':>9}",
    ]
    for model, settings in results.items():
        for placement, values in settings.items():
            lines += _timing_lines(model, values.get("blocks", placement), values)
    lines += ["", "ratios of medians (each against the reference it names)"]
    lines.append(f"{'model':<12} {'layers':<8} {'metric':<38} {'value':>8} {'target':>8}  met")
    for row in ratios:
        met = {None: "", True: "yes", False: "NO"}[row["met"]]
        line = (
            f"{row['model']:<12} {row['layers']:<8} {row['metric']:<38} "
            f"{row['value']:>8.3f} {row['target']:>8}  {met}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


def environment(device: torch.device, dtype: torch.dtype, args) -> dict[str, Any]:
    import peft
    import transformers

    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "argv": sys.argv[1:],
        "args": vars(args),
        "memory": "max_memory_allocated" if device.type == "cuda" else "peak RSS above baseline",
    }


def _threads_and_device(args) -> tuple[torch.device, torch.dtype]:
    """Set ``--threads`` (when given) and resolve the device and dtype of a measurement."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return resolve_device(args)


def measure_models(
    names: Sequence[str], load: Callable[[str, torch.device, torch.dtype], Spec], args
) -> tuple[dict[str, dict[str, dict[str, Any]]], torch.device, torch.dtype]:
    """Every measurement of every model ``load(name, device, dtype)`` in both placements."""
    device, dtype = _threads_and_device(args)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        spec = load(name, device, dtype)
        top = min(args.top_layers, spec.num_blocks - 1)
        placements = {"all": None, "top": f"-{top}:"}
        results[name] = {
            p: run_setting(spec, layers, args, device) for p, layers in placements.items()
        }
        for values in results[name].values():
            values["num_blocks"] = spec.num_blocks
        results[name]["all"]["blocks"] = f"all{spec.num_blocks}"
        results[name]["top"]["blocks"] = f"top{top}/{spec.num_blocks}"
        del spec
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results, device, dtype


def report(
    results: dict, ratios: Sequence[Ratio], args, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Print the tables, write the JSON to ``args.out`` and return it."""
    rows = ratio_rows(results, ratios, args.draws)
    env = environment(device, dtype, args)
    print(format_tables(results, rows, env))
    out = {"environment": env, "results": results, "ratios": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    names = args.models.split(",")
    sections = args.sections.split(",")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    device, dtype = resolve_device(args)
    if "cost" in sections:
        results, device, dtype = measure_models(names, load_spec, args)
    if "sentiment" in sections:
        sentiment, device, dtype = measure_sentiment_models(names, load_spec, args)
        for name, settings in sentiment.items():
            results.setdefault(name, {}).update(settings)
    return report(results, RATIOS, args, device, dtype)


if __name__ == "__main__":
    main(parse_args())
