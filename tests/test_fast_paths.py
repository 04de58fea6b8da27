"""Frozen-prefix reuse, the cross-step prefix cache and draw chunking give the same numbers as
the plain full forward."""

from __future__ import annotations

import pyro
import pytest
import torch

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.scoring.prefix import FrozenPrefix, PrefixCache, find_stack
from bslora_pyro.testing import (
    assert_equal_up_to_rounding,
    tiny_bert,
    tiny_llama,
    tiny_tokenizer,
)

# every comparison here is between computations equal in exact arithmetic: run each test
# under two thread counts so a tolerance that only holds for one summation order fails here
pytestmark = pytest.mark.usefixtures("thread_count")

LOGLIK = "choice_loglik"


def make_example(uid: str, question: str, choices: tuple[str, ...], label: int = 0):
    listed = " ".join(f"{letter}. {c}." for letter, c in zip("ABCD", choices, strict=False))
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=choices,
        label=label,
        letter_prompt=f"Q: {question} Choices: {listed} Answer:",
        loglik_pairs=tuple((f"Q: {question}\nA:", f" {c}") for c in choices),
    )


EXAMPLES = [
    make_example("a", "Which one is a fruit, if any of these?", ("apple", "rock", "chair"), 0),
    make_example("b", "Sky?", ("blue", "green"), 0),
    make_example("c", "Pick the second number in this list", ("one", "two", "three", "four"), 1),
    make_example("d", "Hot or cold: fire", ("hot", "cold, very cold"), 0),
]


def count_lower_rows(monkeypatch) -> list[int]:
    """Record how many rows each call of ``FrozenPrefix.lower`` computes."""
    computed: list[int] = []
    original = FrozenPrefix.lower

    def counting_lower(self, rows, context=None):
        computed.append(rows.num_rows)
        return original(self, rows, context)

    monkeypatch.setattr(FrozenPrefix, "lower", counting_lower)
    return computed


def build(
    backbone: str,
    layers,
    mode: str,
    scorer: ChoiceScorer | None = None,
    seed: int = 0,
    attention: str | None = None,
    lm_head: bool = False,
):
    """A BayesianLora on a 4-block tiny model with non-zero factors (``lm_head``: the Llama's
    LM head adapted too)."""
    torch.manual_seed(seed)
    if backbone == "llama":
        model = tiny_llama(num_layers=4, seed=seed)
        if attention is not None:
            model.set_attn_implementation(attention)
        tok, targets, heads = tiny_tokenizer("left"), ["q_proj", "v_proj", "down_proj"], []
        targets += ["lm_head"] if lm_head else []
    else:
        model = tiny_bert(num_layers=4, seed=seed)
        tok, targets, heads = tiny_tokenizer("right"), ["query", "value"], ["classifier"]
    config = AdapterConfig(
        r=4, alpha=8.0, target_modules=targets, layers=layers, trainable_modules=heads
    )
    method = BayesianLora(model, scorer or ChoiceScorer(tok, mode), config)
    with torch.no_grad():
        for layer in method.adapters.values():
            layer.lora_B.normal_(0.0, 0.5)
    return method


def predict(method, batch, scorer, gates, num_draws):
    method.set_gates(gates)
    with torch.no_grad():
        return scorer.logits(method.backbone, batch, num_draws)


CASES = [("llama", "letter"), ("llama", "choice_loglik"), ("bert", "encoder")]


@pytest.mark.parametrize(("backbone", "mode"), CASES)
def test_prefix_reuse_matches_full_forward(backbone, mode):
    method = build(backbone, "2:", mode)
    fast = method.scorer
    slow = ChoiceScorer(fast.tokenizer, mode, reuse_prefix=False)
    assert fast._prefix(method.backbone).start == 2
    batch = fast.encode(EXAMPLES)
    torch.manual_seed(1)
    gates = method.sample_gates(3)  # [3, r] per module
    expected = predict(method, batch, slow, gates, 3)
    got = predict(method, batch, fast, gates, 3)
    assert_equal_up_to_rounding(got, expected)
    assert not torch.allclose(expected[0], expected[1])  # the draws do differ
    per_example = {k: v.repeat_interleave(len(EXAMPLES), 0) for k, v in gates.items()}
    assert_equal_up_to_rounding(predict(method, batch, fast, per_example, 3), expected)


@pytest.mark.parametrize(("backbone", "mode"), [("llama", "letter"), ("bert", "encoder")])
def test_all_layers_adapted_falls_back(backbone, mode):
    method = build(backbone, None, mode)
    assert method.scorer._prefix(method.backbone) is None


def test_hidden_states_at_real_positions_ignore_padding():
    model = tiny_llama(num_layers=4)
    scorer = ChoiceScorer(tiny_tokenizer("left"), "letter")
    prefix = FrozenPrefix(find_stack(model), start=3)
    batch = scorer.encode(EXAMPLES)
    rows = scorer._rows(batch)
    together = prefix.lower(rows)
    mask = rows.attention_mask.bool()
    for r, ex in enumerate(EXAMPLES):
        alone_rows = scorer._rows(scorer.encode([ex]))
        alone = prefix.lower(alone_rows)[0][alone_rows.attention_mask[0].bool()]
        assert_equal_up_to_rounding(together[r][mask[r]], alone)


def loss_and_grads(method, batch, index, num_data, per_example=True):
    pyro.set_rng_seed(3)
    method.zero_grad(set_to_none=True)
    terms = method.training_loss(batch, index, num_data, num_draws=2, per_example=per_example)
    terms.loss.backward()
    grads = [p.grad.clone() for p in method.factor_parameters().values()]
    return terms.loss.detach(), grads


@pytest.mark.parametrize(
    ("backbone", "mode", "share"), [(*case, True) for case in CASES] + [("llama", LOGLIK, False)]
)
def test_training_with_cache_matches_full_forward(backbone, mode, share, monkeypatch):
    method = build(backbone, "-1:", mode)
    scorer = method.scorer
    scorer.share_context = share
    computed = count_lower_rows(monkeypatch)
    first = scorer.encode(EXAMPLES[:3])
    mixed = scorer.encode([EXAMPLES[3], EXAMPLES[0], EXAMPLES[2]])  # one miss, two hits
    rows_per_question = first.input_ids.reshape(-1, first.input_ids.shape[-1]).shape[0] // 3
    packed = share and mode == LOGLIK  # the prefix then computes one packed row per question
    per_question = 1 if packed else rows_per_question
    for batch, misses in ((first, 3), (mixed, 1), (first, 0)):
        index = torch.arange(3)
        scorer.reuse_prefix = False
        expected = loss_and_grads(method, batch, index, 12)
        scorer.reuse_prefix = True
        computed.clear()
        got = loss_and_grads(method, batch, index, 12)
        assert sum(computed) == misses * per_question
        assert_equal_up_to_rounding(got[0], expected[0])
        for g, e in zip(got[1], expected[1], strict=True):
            assert_equal_up_to_rounding(g, e)
    assert len(scorer.prefix_cache) == 4 * rows_per_question  # unpacked rows either way


def test_cache_budget_and_signatures():
    method = build("llama", "-1:", "letter")
    scorer = method.scorer
    scorer.prefix_cache = PrefixCache(budget_mb=0.004)  # a few rows of 32 floats
    batch = scorer.encode(EXAMPLES)
    renamed = scorer.encode([make_example("a", "A different question", ("x", "y"))])
    for b in (batch, batch, renamed):
        scorer.reuse_prefix = False
        expected = loss_and_grads(method, b, torch.arange(b.num_examples), 8)[0]
        scorer.reuse_prefix = True
        got = loss_and_grads(method, b, torch.arange(b.num_examples), 8)[0]
        assert_equal_up_to_rounding(got, expected)
    assert scorer.prefix_cache.full
    assert scorer.prefix_cache.nbytes <= scorer.prefix_cache.budget_bytes


@pytest.mark.parametrize(("backbone", "layers"), [("llama", "2:"), ("llama", None), ("bert", "2:")])
def test_chunked_draws_match_one_forward(backbone, layers):
    mode = "encoder" if backbone == "bert" else "choice_loglik"
    method = build(backbone, layers, mode)
    batch = method.scorer.encode(EXAMPLES)
    chunked = ChoiceScorer(method.scorer.tokenizer, mode, draw_chunk_mb=1e-9)
    whole = ChoiceScorer(method.scorer.tokenizer, mode, draw_chunk_mb=None)
    torch.manual_seed(2)
    gates = method.sample_gates(4 * len(EXAMPLES))  # per-example groups: G = D * B
    assert_equal_up_to_rounding(
        predict(method, batch, chunked, gates, 4), predict(method, batch, whole, gates, 4)
    )
    assert chunked._draws_per_chunk(method.backbone, batch, chunked._rows(batch), 4, None) == 1
    method.set_gates(None)  # per-draw factors (BLoB style) are sliced like gates
    for layer in method.adapters.values():
        layer.sampled_A = layer.lora_A + 0.3 * torch.randn(4, *layer.lora_A.shape)
    with torch.no_grad():
        assert_equal_up_to_rounding(
            chunked.logits(method.backbone, batch, 4), whole.logits(method.backbone, batch, 4)
        )


@pytest.mark.parametrize("mode", ["letter", LOGLIK])
def test_head_runs_once_over_all_draw_chunks_and_matches_the_full_forward(mode, monkeypatch):
    """From a frozen prefix the blocks run draw chunk by draw chunk, the (gated) LM head then
    once over the states of every draw, or in chunks of its own: the same numbers as the
    plain full forward either way, with per-draw and per-example gates."""
    method = build("llama", "2:", mode, lm_head=True)
    assert "lm_head" in method.adapters
    batch = method.scorer.encode(EXAMPLES)
    slow = ChoiceScorer(method.scorer.tokenizer, mode, reuse_prefix=False)
    blocks_chunked = ChoiceScorer(method.scorer.tokenizer, mode, draw_chunk_mb=None)
    blocks_chunked._draws_per_chunk = lambda *args: 1
    head_chunked = ChoiceScorer(method.scorer.tokenizer, mode, draw_chunk_mb=None)
    head_chunked._head_draws_per_chunk = lambda *args: 1
    calls: list[int] = []
    head = type(blocks_chunked.scoring_mode).head

    def counting_head(self, model, batch, picked, num_draws):
        calls.append(num_draws)
        return head(self, model, batch, picked, num_draws)

    monkeypatch.setattr(type(blocks_chunked.scoring_mode), "head", counting_head)
    torch.manual_seed(6)
    for gates in (method.sample_gates(3), method.sample_gates(3 * len(EXAMPLES))):
        expected = predict(method, batch, slow, gates, 3)
        calls.clear()
        assert_equal_up_to_rounding(predict(method, batch, blocks_chunked, gates, 3), expected)
        assert calls == [3]  # three chunks of blocks, one head
        calls.clear()
        assert_equal_up_to_rounding(predict(method, batch, head_chunked, gates, 3), expected)
        assert calls == [1, 1, 1]
    assert not torch.allclose(expected[0], expected[1])  # the draws do differ


@pytest.mark.parametrize("mode", ["letter", "choice_loglik"])
def test_frozen_model_without_adapters_runs_every_block_once(mode):
    model = tiny_llama(num_layers=2).requires_grad_(False)
    fast = ChoiceScorer(tiny_tokenizer("left"), mode)
    slow = ChoiceScorer(fast.tokenizer, mode, reuse_prefix=False)
    assert fast._prefix(model).start == 2
    batch = fast.encode(EXAMPLES)
    assert_equal_up_to_rounding(fast.logits(model, batch, 2), slow.logits(model, batch, 2))


def test_cache_is_shared_by_fresh_loads_of_the_same_base_and_not_across_bases(monkeypatch):
    """Grid runs load the base once per method: states cached by one run serve the next
    (same weights), including a zero-shot run capped at the same block, but never a run on
    different weights."""
    computed = count_lower_rows(monkeypatch)
    scorer = ChoiceScorer(tiny_tokenizer("left"), "choice_loglik", prefix_start=2)
    batch = scorer.encode(EXAMPLES)
    first = build("llama", "2:", "choice_loglik", scorer=scorer)
    with torch.no_grad():
        first.scorer.logits(first.backbone, batch, 1)
    assert sum(computed) > 0
    computed.clear()
    # a fresh copy of the same base without any adapter (zero-shot), capped at block 2
    zero_shot = tiny_llama(num_layers=4, seed=0)
    with torch.no_grad():
        cached = scorer.logits(zero_shot, batch, 1)
    assert sum(computed) == 0
    plain = ChoiceScorer(tiny_tokenizer("left"), "choice_loglik", reuse_prefix=False)
    with torch.no_grad():
        expected = plain.logits(tiny_llama(num_layers=4, seed=0), plain.encode(EXAMPLES), 1)
    assert_equal_up_to_rounding(cached, expected)
    # other weights: nothing is served from the cache
    with torch.no_grad():
        scorer.logits(tiny_llama(num_layers=4, seed=1), batch, 1)
    assert sum(computed) > 0


# ---------------------------------------------------------------------------- shared contexts


def pairs_example(uid: str, pairs: tuple[tuple[str, str], ...], label: int = 0):
    """A choice_loglik example with explicit (context, continuation) pairs."""
    return MultipleChoiceExample(
        uid=uid,
        question=pairs[0][0],
        choices=tuple(continuation for _, continuation in pairs),
        label=label,
        letter_prompt=f"{pairs[0][0]} Answer:",
        loglik_pairs=pairs,
    )


# WinoGrande-style: the contexts differ after a common prefix, the continuations are equal
WINO = pairs_example(
    "w",
    (
        ("The cup fell off the shelf because the cup", " was slippery."),
        ("The cup fell off the shelf because the shelf", " was slippery."),
    ),
)
WINO_PREFIX = len("The cup fell off the shelf because the ")  # one token per byte
UNSHARED = pairs_example("u", (("Abc def ghi", " jkl"), ("Xyz def ghi", " jkl")))


def score_pair(method, batch, fast, gates, num_draws, sampled=None):
    """(fast, reference) logits; the reference runs the plain unpacked forward."""
    slow = ChoiceScorer(fast.tokenizer, LOGLIK, reuse_prefix=False)
    for layer, a in zip(method.adapters.values(), sampled or [], strict=False):
        layer.sampled_A = a
    try:
        return predict(method, batch, fast, gates, num_draws), predict(
            method, batch, slow, gates, num_draws
        )
    finally:
        for layer in method.adapters.values():
            layer.sampled_A = None


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layers", ["2:", None])  # a frozen prefix, or adapters from block 0
def test_shared_context_matches_unshared_rows(attention, layers):
    method = build("llama", layers, LOGLIK, attention=attention)
    fast = method.scorer
    batch = fast.encode(EXAMPLES)
    rows = fast._rows(batch)
    packed = fast._pack(batch, rows)
    assert packed is not None and packed.rows.input_ids.numel() < rows.input_ids.numel()
    assert fast._prefix(method.backbone, allow_empty=True).start == (2 if layers else 0)
    torch.manual_seed(4)
    for num_draws in (1, 3):
        per_draw = method.sample_gates(num_draws)
        per_example = method.sample_gates(num_draws * len(EXAMPLES))
        for gates in (per_draw, per_example):
            got, expected = score_pair(method, batch, fast, gates, num_draws)
            assert_equal_up_to_rounding(got, expected)
    assert not torch.allclose(got[0], got[1])  # the draws do differ
    sampled = [  # per-draw factors (BLoB style)
        layer.lora_A + 0.3 * torch.randn(3, *layer.lora_A.shape)
        for layer in method.adapters.values()
    ]
    got, expected = score_pair(method, batch, fast, None, 3, sampled)
    assert_equal_up_to_rounding(got, expected)


def test_packed_rows_hold_each_context_once_and_keep_every_state():
    model = tiny_llama(num_layers=4)
    scorer = ChoiceScorer(tiny_tokenizer("left"), LOGLIK)
    batch = scorer.encode(EXAMPLES)
    rows = scorer._rows(batch)
    packed = scorer._pack(batch, rows)
    # question 0: its context but the last token once, then per choice that last token and
    # the continuation but its last token, then the one pad token of its missing 4th choice
    context = EXAMPLES[0].loglik_pairs[0][0].rstrip()  # one token per byte
    first = packed.rows.input_ids[0][packed.rows.attention_mask[0].bool()]
    assert first[: len(context) - 1].tolist() == scorer.tokenizer(context[:-1])["input_ids"]
    choices = EXAMPLES[0].choices
    assert len(first) == len(context) - 1 + sum(len(f" {c}") for c in choices) + 1
    prefix = FrozenPrefix(find_stack(model), start=3)
    unpacked, together = prefix.lower(rows), prefix.lower(packed.rows)
    mask = rows.attention_mask.bool()
    assert_equal_up_to_rounding(packed.unpack(together)[mask], unpacked[mask])
    valid = packed.rows.attention_mask.bool()
    assert_equal_up_to_rounding(packed.pack(unpacked)[valid], together[valid])


@pytest.mark.parametrize("per_example", [True, False])
@pytest.mark.parametrize("layers", ["-1:", None])
def test_shared_context_training_matches_unshared_rows(per_example, layers):
    method = build("llama", layers, LOGLIK)
    scorer = method.scorer
    batch = scorer.encode(EXAMPLES)
    index = torch.arange(len(EXAMPLES))
    for _ in range(2):  # the second pass serves the block-k states from the cache
        scorer.reuse_prefix = False
        expected = loss_and_grads(method, batch, index, 12, per_example)
        scorer.reuse_prefix = True
        got = loss_and_grads(method, batch, index, 12, per_example)
        assert_equal_up_to_rounding(got[0], expected[0])
        for g, e in zip(got[1], expected[1], strict=True):
            assert_equal_up_to_rounding(g, e)
    assert (len(scorer.prefix_cache) > 0) == (layers is not None)


def test_letter_mode_is_not_packed():
    method = build("llama", "2:", "letter")
    batch = method.scorer.encode(EXAMPLES)
    unshared = ChoiceScorer(method.scorer.tokenizer, "letter", share_context=False)
    assert method.scorer._pack(batch, method.scorer._rows(batch)) is None
    gates = method.sample_gates(2)
    # exact: letter rows are never packed, so both scorers run the same kernels on the same
    # rows in the same order (share_context changes nothing here)
    torch.testing.assert_close(
        predict(method, batch, method.scorer, gates, 2),
        predict(method, batch, unshared, gates, 2),
        atol=0,
        rtol=0,
    )


def test_differing_contexts_share_their_common_prefix_or_fall_back():
    method = build("llama", "2:", LOGLIK)
    fast = method.scorer
    mixed = fast.encode([EXAMPLES[0], WINO, EXAMPLES[1]])
    packed = fast._pack(mixed, fast._rows(mixed))
    wino_rows = packed.rows.attention_mask[1].sum()
    wino_tokens = fast._rows(mixed).attention_mask[mixed.num_choices : 2 * mixed.num_choices]
    assert wino_tokens.sum() - wino_rows == WINO_PREFIX  # shared once instead of twice
    unshared = fast.encode([UNSHARED])
    assert fast._pack(unshared, fast._rows(unshared)) is None  # nothing to share: plain rows
    torch.manual_seed(5)
    for batch in (mixed, unshared):
        for groups in (2, 2 * batch.num_examples):
            got, expected = score_pair(method, batch, fast, method.sample_gates(groups), 2)
            assert_equal_up_to_rounding(got, expected)
