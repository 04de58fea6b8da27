"""ChoiceScorer against naive one-sequence-at-a-time computations on tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import (
    ChoiceScorer,
    ScoringError,
    choice_probabilities,
    masked_fill_value,
)
from bslora_pyro.testing import (
    assert_equal_up_to_rounding,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_tokenizer,
)

# fast scoring paths are compared with naive forwards: run under two thread counts so a
# tolerance that holds for only one summation order fails here, not on a user's machine
pytestmark = pytest.mark.usefixtures("thread_count")

LETTERS = "ABCDE"


def make_example(uid: str, question: str, choices: tuple[str, ...], label: int):
    listed = " ".join(f"{letter}. {c}." for letter, c in zip(LETTERS, choices, strict=False))
    context = f"Question: {question}\nAnswer:"
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=choices,
        label=label,
        letter_prompt=f"Pick one: {question} Choices: {listed} Answer:",
        loglik_pairs=tuple((context, f" {c}") for c in choices),
    )


EXAMPLES = [
    make_example("q0", "Which is a fruit?", ("apple", "rock", "chair"), 0),
    make_example("q1", "Is the sky blue on a clear day at noon?", ("yes", "no"), 0),
    make_example("q2", "Pick 2", ("one", "two", "three and a half", "four"), 1),
    make_example("q3", "Hot or cold: what is fire?", ("hot", "cold, very cold"), 0),
]


@pytest.fixture(scope="module")
def models():
    return {"llama": tiny_llama(), "gpt2": tiny_gpt2()}


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


def naive_letter(model, tok, example):
    ids = torch.tensor([tok(example.letter_prompt)["input_ids"]])
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
    letter_ids = [tok.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]
    return last[letter_ids[: example.num_choices]]


def naive_loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(log_probs[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


# ---------------------------------------------------------------------------- letter mode


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_letter_matches_naive_forward(models, arch, side):
    model, tok = models[arch], tiny_tokenizer(side)
    scorer = ChoiceScorer(tok, "letter")
    batch = scorer.encode(EXAMPLES)
    assert batch.input_ids.shape[0] == len(EXAMPLES)
    with torch.no_grad():
        logits = scorer.logits(model, batch)
    assert logits.shape == (1, len(EXAMPLES), 4)
    for b, ex in enumerate(EXAMPLES):
        expected = naive_letter(model, tok, ex)
        assert_equal_up_to_rounding(logits[0, b, : ex.num_choices], expected)
        assert torch.all(logits[0, b, ex.num_choices :] == masked_fill_value())
    assert torch.equal(batch.labels, torch.tensor([0, 0, 1, 0]))
    assert batch.choice_mask.sum(1).tolist() == [3, 2, 4, 2]


def test_letter_prefers_single_token_with_space():
    tok = tiny_tokenizer()
    scorer = ChoiceScorer(tok, "letter")
    # the byte-level tokenizer splits " A" into two tokens, so "A" is used
    assert scorer.letter_token_ids(2) == [tok.encode("A")[0], tok.encode("B")[0]]


class _TwoTokenTokenizer:
    """Every text becomes two tokens."""

    name_or_path = "two-token-test"
    unk_token_id = None
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [1, 2]


def _unk_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel(vocab={"[UNK]": 0, "[PAD]": 1, "hi": 2}, unk_token="[UNK]")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.mark.parametrize("make_tok", [_TwoTokenTokenizer, _unk_tokenizer])
def test_letter_not_single_token_raises(make_tok):
    scorer = ChoiceScorer(make_tok(), "letter")
    with pytest.raises(ScoringError, match="'A'"):
        scorer.letter_token_ids(2)


def test_letter_truncates_from_the_left(models):
    tok = tiny_tokenizer()
    scorer = ChoiceScorer(tok, "letter", max_length=12)
    batch = scorer.encode(EXAMPLES[:2])
    assert batch.input_ids.shape[1] == 12
    tail = tok.decode(batch.input_ids[0].tolist())
    assert tail.endswith("Answer:")
    with torch.no_grad():
        logits = scorer.logits(models["llama"], batch)
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------- choice_loglik


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_choice_loglik_matches_naive(models, arch, side):
    model, tok = models[arch], tiny_tokenizer(side)
    scorer = ChoiceScorer(tok, "choice_loglik")
    batch = scorer.encode(EXAMPLES)
    assert batch.input_ids.shape[0] == len(EXAMPLES) * 4
    with torch.no_grad():
        logits = scorer.logits(model, batch)
    assert logits.shape == (1, len(EXAMPLES), 4)
    for b, ex in enumerate(EXAMPLES):
        expected = torch.tensor([naive_loglik(model, tok, *pair) for pair in ex.loglik_pairs])
        assert_equal_up_to_rounding(logits[0, b, : ex.num_choices], expected)
        assert torch.all(logits[0, b, ex.num_choices :] == masked_fill_value())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("share_context", [True, False])
def test_choice_loglik_mean_is_the_sum_over_the_token_count(models, arch, side, share_context):
    model, tok = models[arch], tiny_tokenizer(side)
    summed = ChoiceScorer(tok, "choice_loglik", share_context=share_context)
    mean = ChoiceScorer(tok, "choice_loglik_mean", share_context=share_context)
    with torch.no_grad():
        logits = mean.logits(model, mean.encode(EXAMPLES), num_draws=2)
        sums = summed.logits(model, summed.encode(EXAMPLES))
    assert logits.shape == (2, len(EXAMPLES), 4)
    assert_equal_up_to_rounding(logits[0], logits[1])
    for b, ex in enumerate(EXAMPLES):
        counts = torch.tensor(
            [len(tok(cont, add_special_tokens=False)["input_ids"]) for _, cont in ex.loglik_pairs],
            dtype=torch.float32,
        )
        expected = sums[0, b, : ex.num_choices] / counts
        assert_equal_up_to_rounding(logits[0, b, : ex.num_choices], expected)
        assert torch.all(logits[0, b, ex.num_choices :] == masked_fill_value())


def test_choice_loglik_truncates_context_keeps_continuation(models):
    model, tok = models["llama"], tiny_tokenizer()
    max_length = 10
    scorer = ChoiceScorer(tok, "choice_loglik", max_length=max_length)
    batch = scorer.encode(EXAMPLES[:1])
    assert batch.input_ids.shape[1] <= max_length
    with torch.no_grad():
        logits = scorer.logits(model, batch)
    for c, (context, continuation) in enumerate(EXAMPLES[0].loglik_pairs):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        full = (ctx + cont)[-(max_length + 1) :]
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([full[:-1]])).logits[0].log_softmax(-1)
        start = len(full) - 1 - len(cont)
        expected = sum(log_probs[start + j, t].item() for j, t in enumerate(cont))
        assert abs(logits[0, 0, c].item() - expected) < 1e-4


def test_choice_loglik_moves_trailing_space_to_continuation():
    tok = tiny_tokenizer()
    ex = MultipleChoiceExample(
        uid="w",
        question="q",
        choices=("a", "b"),
        label=0,
        letter_prompt="q",
        loglik_pairs=(("The cat ", "sat"), ("The dog ", "sat")),
    )
    batch = ChoiceScorer(tok, "choice_loglik").encode([ex])
    # " sat" = 4 byte tokens are scored
    assert batch.target_mask.sum(1).tolist() == [4, 4]


# ---------------------------------------------------------------------------- encoder mode


def test_encoder_matches_direct_call(bert):
    tok = tiny_tokenizer("right")
    scorer = ChoiceScorer(tok, "encoder")
    batch = scorer.encode(EXAMPLES)
    assert batch.input_ids.shape[:2] == (len(EXAMPLES), 4)
    with torch.no_grad():
        logits = scorer.logits(bert, batch, num_draws=2)
        direct = bert(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        ).logits
    assert logits.shape == (2, len(EXAMPLES), 4)
    mask = batch.choice_mask
    assert_equal_up_to_rounding(logits[0][mask], direct[mask])
    torch.testing.assert_close(logits[1], logits[0])
    assert torch.all(logits[0][~mask] == masked_fill_value())
    # padding to the batch's longest pair does not change an example's scores
    with torch.no_grad():
        alone = scorer.logits(bert, scorer.encode(EXAMPLES[1:2]))
    assert_equal_up_to_rounding(alone[0, 0], logits[0, 1, :2])


def test_encoder_truncates_question_from_the_left(bert):
    tok = tiny_tokenizer("right")
    scorer = ChoiceScorer(tok, "encoder", max_length=16)
    batch = scorer.encode(EXAMPLES[:1])
    assert batch.input_ids.shape[-1] <= 16
    row = tok.decode(batch.input_ids[0, 0][batch.attention_mask[0, 0].bool()].tolist())
    assert row.endswith("apple")


# ---------------------------------------------------------------------------- draws and rows


@pytest.mark.parametrize("mode", ["letter", "choice_loglik", "choice_loglik_mean"])
def test_num_draws_replicates_draw_major(models, mode):
    model, tok = models["llama"], tiny_tokenizer()
    scorer = ChoiceScorer(tok, mode)
    batch = scorer.encode(EXAMPLES)
    rows = batch.input_ids.shape[0]
    seen: dict[str, list[int]] = {"q_proj": [], "lm_head": []}
    handles = [
        model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
            lambda mod, args: seen["q_proj"].append(args[0].shape[0])
        ),
        model.lm_head.register_forward_pre_hook(
            lambda mod, args: seen["lm_head"].append(args[0].shape[0])
        ),
    ]
    try:
        with torch.no_grad():
            one = scorer.logits(model, batch)
            three = scorer.logits(model, batch, num_draws=3)
    finally:
        for handle in handles:
            handle.remove()
    assert three.shape == (3, len(EXAMPLES), 4)
    for d in range(3):
        assert_equal_up_to_rounding(three[d], one[0])
    # choice_loglik: the blocks run one packed row per question (shared context), the head
    # one row of scored tokens per question
    if mode.startswith("choice_loglik"):
        rows = len(EXAMPLES)
    assert seen["q_proj"] == [rows, 3 * rows]
    assert seen["lm_head"] == [rows, 3 * rows]


def _group_scale_hook(scales: torch.Tensor):
    """Scale ``output.view(G, -1, ...)[g]`` by ``scales[g]`` (a stand-in for gated LoRA)."""

    def hook(module, args, output):
        grouped = output.view(scales.shape[0], -1, *output.shape[1:])
        shape = (-1,) + (1,) * (grouped.dim() - 1)
        return (grouped * scales.view(shape)).view(output.shape)

    return hook


def _score_with_scales(model, scorer, examples, scales, num_draws):
    layers = [model.model.layers[0].self_attn.v_proj, model.lm_head]
    handles = [layer.register_forward_hook(_group_scale_hook(scales)) for layer in layers]
    try:
        with torch.no_grad():
            return scorer.logits(model, scorer.encode(examples), num_draws=num_draws)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("mode", ["letter", "choice_loglik", "choice_loglik_mean"])
def test_row_order_per_draw_and_per_question(models, mode):
    """Group g of x.view(G, -1, ...) is draw d (G = D) or (draw d, question b) (G = D * B)."""
    model, scorer = models["llama"], ChoiceScorer(tiny_tokenizer(), mode)
    examples, num_draws = EXAMPLES[:3], 2
    per_draw = _score_with_scales(model, scorer, examples, torch.tensor([1.0, 1.7]), num_draws)
    for d, scale in enumerate([1.0, 1.7]):
        ref = _score_with_scales(model, scorer, examples, torch.tensor([scale]), 1)
        assert_equal_up_to_rounding(per_draw[d], ref[0])
    scales = torch.linspace(0.5, 2.0, num_draws * len(examples))
    grouped = _score_with_scales(model, scorer, examples, scales, num_draws)
    for d in range(num_draws):
        for b, ex in enumerate(examples):
            scale = scales[d * len(examples) + b].view(1)
            ref = _score_with_scales(model, scorer, [ex], scale, 1)
            n = ex.num_choices
            assert_equal_up_to_rounding(grouped[d, b, :n], ref[0, 0, :n])


def test_encoder_rows_see_draw_major_batch(bert):
    scorer = ChoiceScorer(tiny_tokenizer("right"), "encoder")
    batch = scorer.encode(EXAMPLES)
    seen = []
    query = bert.bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            scorer.logits(bert, batch, num_draws=3)
    finally:
        handle.remove()
    assert seen == [3 * len(EXAMPLES) * 4]


# ---------------------------------------------------------------------------- misc


def test_probabilities_and_batch_to(models):
    scorer = ChoiceScorer(tiny_tokenizer(), "letter")
    batch = scorer.encode(EXAMPLES).to("cpu")
    with torch.no_grad():
        probs = choice_probabilities(scorer.logits(models["gpt2"], batch))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, len(EXAMPLES)))
    assert probs[0][~batch.choice_mask].max() == 0


def test_bad_inputs_raise():
    tok = tiny_tokenizer()
    with pytest.raises(ScoringError, match="mode"):
        ChoiceScorer(tok, "nope")
    with pytest.raises(ScoringError):
        ChoiceScorer(tok, "letter").encode([])
    bad = make_example("bad", "q", ("a", "b"), 5)
    with pytest.raises(ScoringError, match="label"):
        ChoiceScorer(tok, "choice_loglik").encode([bad])
    batch = ChoiceScorer(tok, "letter").encode(EXAMPLES[:1])
    with pytest.raises(ScoringError, match="encoded"):
        ChoiceScorer(tok, "choice_loglik").logits(tiny_llama(), batch)


def test_letter_mode_scores_the_answer_words_a_prompt_asks_for():
    """BoolQ's prompt asks for True or False: those tokens are scored, not " A"/" B"."""
    from bslora_pyro.data.example import MultipleChoiceExample
    from bslora_pyro.data.tasks.boolq import BOOLQ

    example = BOOLQ.parse_local({"question": "is it", "passage": "P", "answer": True}, "b0")
    assert example.answer_words == ("True", "False")
    scorer = ChoiceScorer(tiny_tokenizer(), "letter")
    yes_no = MultipleChoiceExample("q", "is it", ("yes", "no"), 0, "Is it? Y or N:", (),
                                   answer_words=("Y", "N"))
    batch = scorer.encode([yes_no])
    assert batch.letter_ids.tolist() == [scorer.letter_token_id("Y"), scorer.letter_token_id("N")]
    plain = dataclasses.replace(yes_no, answer_words=None)
    assert scorer.encode([plain]).letter_ids.tolist() == scorer.letter_token_ids(2)
    with pytest.raises(ScoringError, match="mixes answer words"):
        scorer.encode([yes_no, plain])


def test_a_long_letter_prompt_is_cut_inside_its_passage_keeping_the_question():
    from bslora_pyro.data.tasks.boolq import BOOLQ

    passage = " ".join(f"word{i}" for i in range(200))
    example = BOOLQ.parse_local({"question": "is the sky blue", "passage": passage,
                                 "answer": True}, "b1")
    example = dataclasses.replace(example, answer_words=("T", "F"))  # byte tokens here
    tokenizer = tiny_tokenizer()
    scorer = ChoiceScorer(tokenizer, "letter", max_length=120)
    batch = scorer.encode([example])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    text = tokenizer.decode(ids)
    assert len(ids) == 120
    assert "Answer the question with only True or False: is the sky blue Context: word0" in text
    assert text.endswith(".")  # the prompt's end stays too
