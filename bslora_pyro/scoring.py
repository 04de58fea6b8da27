"""Turn multiple-choice examples into choice logits (the logits of one Categorical).

Three modes:

* ``letter``: one prompt per question; the LM head is applied at the last real position only
  and the columns of the answer letters ``A, B, ...`` are kept.
* ``choice_loglik``: one ``(context, continuation)`` row per (question, choice); the logit of a
  choice is the summed log-probability of its continuation tokens (lm-evaluation-harness
  style). The LM head is applied only at the positions that predict continuation tokens.
* ``encoder``: multiple-choice head models (``BertForMultipleChoice``); each
  ``(question, choice)`` is encoded as a text pair and the model returns ``[B, C]`` logits.

Row convention (the gated LoRA layers rely on it): with ``num_draws`` draws every tensor
reaching the network has leading dimension ``num_draws * m``, draw-major (``x.view(num_draws,
m, ...)[d]`` is draw ``d``'s copy); inside a draw rows follow the questions, and in
``choice_loglik`` and ``encoder`` modes row ``question * C + choice``.

Fast paths (same logits, see ``tests/test_fast_paths.py``): when every adapter sits in blocks
``>= k`` of a supported stack (Llama family, BERT), the blocks below ``k`` run once per batch
without autograd and only the top runs per draw (:mod:`bslora_pyro.prefix`); under autograd the
block-``k`` states are cached across steps by example uid within ``prefix_cache_mb``. In
``choice_loglik`` mode on Llama stacks the rows of a question are packed into one
(:class:`~bslora_pyro.prefix.PackedRows`): the context the choices share runs once per question
and draw, each choice's continuation attends to it. Draws are split into chunks whose estimated
activation memory fits ``draw_chunk_mb``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.adapter.gated_lora import GatedLoraLinear, GateShapeError
from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.prefix import (
    BertStack,
    FrozenPrefix,
    LlamaStack,
    PackedRows,
    PrefixCache,
    Rows,
    lower_with_cache,
    pack_rows,
    packed_lower_with_cache,
    prefix_fingerprint,
)

MODES = ("letter", "choice_loglik", "encoder")
AUTO_CHUNK_MB = {"cpu": 64.0, "accelerator": 4096.0}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class ScoringError(ValueError):
    """Examples, tokenizer or model cannot be scored in the requested mode."""


def masked_fill_value(dtype: torch.dtype = torch.float32) -> float:
    """The large negative finite logit given to missing choices."""
    return torch.finfo(dtype).min / 2


def choice_probabilities(logits: Tensor) -> Tensor:
    """Softmax over the choices (the last dimension)."""
    return torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------- encoded batch


@dataclass
class EncodedBatch:
    """Tensors for one batch of ``B`` questions with up to ``C`` choices.

    ``input_ids``/``attention_mask`` are ``[B, T]`` (letter), ``[B * C, T]`` (choice_loglik,
    row ``question * C + choice``) or ``[B, C, T]`` (encoder). ``last_positions`` ``[B]`` and
    ``letter_ids`` ``[C]`` serve letter mode; ``target_positions``, ``target_ids`` and
    ``target_mask`` ``[B * C, K]`` hold, per row, the positions predicting continuation
    tokens, those tokens and which of the ``K`` slots are real. ``uids`` ``[B]`` name the
    questions (keys of the cross-step prefix cache).
    """

    mode: str
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    choice_mask: Tensor
    position_ids: Tensor | None = None
    token_type_ids: Tensor | None = None
    last_positions: Tensor | None = None
    letter_ids: Tensor | None = None
    target_positions: Tensor | None = None
    target_ids: Tensor | None = None
    target_mask: Tensor | None = None
    uids: tuple[str, ...] | None = None

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_choices(self) -> int:
        return int(self.choice_mask.shape[1])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def _map(self, fn) -> EncodedBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> EncodedBatch:
        """A copy with every tensor on ``device`` (non-blocking only for copies from the CPU)."""
        return self._map(
            lambda t: t.to(device, non_blocking=non_blocking and t.device.type == "cpu")
        )

    def pin_memory(self) -> EncodedBatch:
        """A copy in pinned CPU memory (a no-op copy without CUDA)."""
        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory() if t.device.type == "cpu" else t)


# ---------------------------------------------------------------------------- helpers


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _truncate_left(ids: list[int], max_length: int, keep_first: int | None = None) -> list[int]:
    """Keep the last ``max_length`` ids (and the first id when it equals ``keep_first``)."""
    if len(ids) <= max_length:
        return ids
    if keep_first is not None and ids and ids[0] == keep_first and max_length > 1:
        return [ids[0], *ids[len(ids) - max_length + 1 :]]
    return ids[len(ids) - max_length :]


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[Tensor, Tensor, int]:
    """Pad ``seqs`` to a common length; returns ids, mask and the common length."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not seq:
            continue
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return ids, mask, width


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids counting real tokens only (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _offset(length: int, width: int, side: str) -> int:
    """Column of a sequence's first token after padding."""
    return width - length if side == "left" else 0


def _choice_mask(examples: Sequence[MultipleChoiceExample], num_choices: int) -> Tensor:
    counts = torch.tensor([ex.num_choices for ex in examples])
    return torch.arange(num_choices).unsqueeze(0) < counts.unsqueeze(1)


def _check_examples(examples: Sequence[MultipleChoiceExample], mode: str) -> None:
    if len(examples) == 0:
        raise ScoringError("no examples to encode")
    for ex in examples:
        if ex.num_choices < 1 or not 0 <= ex.label < ex.num_choices:
            raise ScoringError(f"example {ex.uid!r}: label {ex.label} outside its choices")
        if mode == "choice_loglik" and len(ex.loglik_pairs) != ex.num_choices:
            raise ScoringError(
                f"example {ex.uid!r}: {len(ex.loglik_pairs)} loglik pairs for "
                f"{ex.num_choices} choices"
            )
        if mode == "letter" and ex.num_choices > len(LETTERS):
            raise ScoringError(f"example {ex.uid!r}: more than {len(LETTERS)} choices")


@contextmanager
def _truncation_side(tokenizer: Any, side: str) -> Iterator[None]:
    """Temporarily set the tokenizer's truncation side."""
    previous = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = previous


def decoder_body(model: Any) -> Any:
    """The transformer body of a causal LM (returns final, normed hidden states)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise ScoringError(f"cannot find the decoder body of {type(model).__name__}")
    return body


def output_head(model: Any) -> Any:
    """The LM head module (possibly a gated LoRA wrapper); always called, never read."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ScoringError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def _accepts(module: Any, name: str) -> bool:
    params = inspect.signature(module.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _model_device(model: Any) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return None


def _gated_layers(model: nn.Module) -> list[GatedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, GatedLoraLinear)]


# per-draw state set on gated LoRA layers from outside: attribute -> dims when per row group
_GROUPED_STATE = {"gates": 2, "sampled_A": 3}


@contextmanager
def _draw_slice(
    layers: Sequence[GatedLoraLinear], num_draws: int, start: int, count: int
) -> Iterator[None]:
    """Temporarily keep only the row groups (gates, sampled factors) of draws
    ``start .. start + count - 1``."""
    saved = [
        (layer, name, getattr(layer, name, None)) for layer in layers for name in _GROUPED_STATE
    ]
    try:
        for layer, name, value in saved:
            if value is None or value.dim() < _GROUPED_STATE[name]:
                continue
            if value.shape[0] % num_draws:
                raise GateShapeError(
                    f"{value.shape[0]} {name} groups are not a multiple of {num_draws} draws"
                )
            per_draw = value.shape[0] // num_draws
            setattr(layer, name, value[start * per_draw : (start + count) * per_draw])
        yield
    finally:
        for layer, name, value in saved:
            setattr(layer, name, value)


def _draw_grouped(module: nn.Module, num_draws: int) -> bool:
    """True when ``module`` treats all rows of a draw alike (no hooks; gates and sampled
    factors shared by all rows or one group per draw), so a draw's rows may be regrouped."""
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        for name, dims in _GROUPED_STATE.items():
            value = getattr(m, name, None) if isinstance(m, GatedLoraLinear) else None
            if value is not None and value.dim() >= dims and value.shape[0] != num_draws:
                return False
    return True


def _draw_bytes(model: Any, rows: int, width: int, blocks: int, head: int, grad: bool) -> int:
    """A rough activation-memory estimate of one draw: a block's transient tensors (times the
    blocks whose activations autograd keeps) plus ``head`` float32 vocabulary rows."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 1024))
    inner = int(getattr(config, "intermediate_size", 4 * hidden))
    heads = int(getattr(config, "num_attention_heads", 16))
    vocab = int(getattr(config, "vocab_size", 32000))
    elem = next(model.parameters()).element_size()
    block = rows * width * (6 * hidden + 3 * inner) * elem + rows * heads * width * width * 4
    return block * (max(1, blocks) if grad else 1) + head * vocab * 8


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


@dataclass
class _Plan:
    """How a batch runs: without a prefix (``None``: the plain forward) or from the
    block-``start`` states ``lower`` of ``rows`` (the packed rows when ``packed`` is set) and
    their block ``context``."""

    prefix: FrozenPrefix | None
    rows: Rows
    context: dict[str, Any] | None = None
    lower: Tensor | None = None
    packed: PackedRows | None = None


def _scored_slots(batch: EncodedBatch) -> tuple[Tensor, Tensor]:
    """The scored continuation tokens of a ``choice_loglik`` batch, question by question:
    ``[B, N]`` indices ``choice * K + k`` into a question's ``[C, K]`` target slots (real ones
    first, choice-major; ``N`` the most any question has) and which of them are real."""
    num_questions = batch.num_examples
    mask = batch.target_mask.reshape(num_questions, -1)
    counts = mask.sum(1)
    width = max(1, int(counts.max()))
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device) < counts[:, None]
    return order, valid


def _token_log_probs(head: nn.Module, states: Tensor, targets: Tensor) -> Tensor:
    """``log p(target)`` ``[..., n]`` under ``head`` (float32) at the states ``[..., n, H]``."""
    log_probs = head(states).float().log_softmax(dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _repeat(t: Tensor | None, num_draws: int) -> Tensor | None:
    """Draw-major replication along the leading dimension."""
    if t is None or num_draws == 1:
        return t
    return t.repeat(num_draws, *([1] * (t.dim() - 1)))


# ---------------------------------------------------------------------------- scorer


class ChoiceScorer:
    """Encode examples and compute choice logits ``[num_draws, B, C]`` in one mode.

    Args:
        reuse_prefix: run the frozen blocks below the lowest adapter once per batch (falls back
            to the full forward where that would not be exact, see :class:`FrozenPrefix`).
        prefix_cache_mb: budget of the cache of block-``k`` states kept across steps, runs
            and evaluation passes (keyed by example uid, checked against the tokens and the
            base model's weights); 0 disables it.
        prefix_start: the highest block at which the frozen prefix may end. Runs on the same
            base with different adapters (or none, zero-shot) then cache the same states.
        prefix_cache_device: where cached states live (CPU RAM by default).
        share_context: in ``choice_loglik`` mode with ``reuse_prefix`` on a Llama stack, pack
            the rows of each question so that the context its choices share runs once (per
            draw); the adapted blocks may then start at block 0.
        draw_chunk_mb: estimated activation budget of one forward; draws beyond it run in
            further chunks. ``"auto"``: 64 MB on CPU (small chunks stay in cache and measure
            fastest there), 4096 MB on accelerators; ``None``: all draws in one forward.
    """

    def __init__(
        self,
        tokenizer: Any,
        mode: str = "letter",
        max_length: int = 300,
        reuse_prefix: bool = True,
        prefix_cache_mb: float = 1024.0,
        prefix_cache_device: str = "cpu",
        draw_chunk_mb: float | str | None = "auto",
        prefix_start: int | None = None,
        share_context: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ScoringError(f"mode must be one of {MODES}, got {mode!r}")
        if max_length < 2:
            raise ScoringError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_length = int(max_length)
        self.pad_id = _pad_id(tokenizer)
        self._letter_ids: dict[str, int] = {}
        self.reuse_prefix = reuse_prefix
        self.draw_chunk_mb = draw_chunk_mb
        self.prefix_cache = (
            PrefixCache(prefix_cache_mb, prefix_cache_device) if prefix_cache_mb > 0 else None
        )
        self._cache_owner: tuple | None = None
        self.prefix_start = prefix_start
        self.share_context = share_context

    def __repr__(self) -> str:
        return f"ChoiceScorer(mode={self.mode!r}, max_length={self.max_length})"

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "left") or "left"

    # ------------------------------------------------------------------ letters

    def letter_token_id(self, letter: str) -> int:
        """The single token id of ``" A"`` (preferred) or ``"A"``; checked once per letter."""
        if letter not in self._letter_ids:
            self._letter_ids[letter] = self._find_letter_id(letter)
        return self._letter_ids[letter]

    def _find_letter_id(self, letter: str) -> int:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        tried = []
        for text in (f" {letter}", letter):
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            tried.append(f"{text!r} -> {ids}")
            if len(ids) == 1 and (unk is None or ids[0] != unk):
                return int(ids[0])
        raise ScoringError(
            f"answer letter {letter!r} is not a single token for tokenizer "
            f"{_tokenizer_name(self.tokenizer)!r} ({'; '.join(tried)}): use another scoring mode"
        )

    def letter_token_ids(self, num_choices: int) -> list[int]:
        """Token ids of the first ``num_choices`` answer letters."""
        return [self.letter_token_id(letter) for letter in LETTERS[:num_choices]]

    # ------------------------------------------------------------------ encoding

    def encode(self, examples: Sequence[MultipleChoiceExample]) -> EncodedBatch:
        """Tokenise, truncate and pad ``examples`` into CPU tensors (pinned under CUDA)."""
        examples = list(examples)
        _check_examples(examples, self.mode)
        encoder = {
            "letter": self._encode_letter,
            "choice_loglik": self._encode_loglik,
            "encoder": self._encode_pairs,
        }[self.mode]
        return encoder(examples).pin_memory()

    def _common(self, examples: list[MultipleChoiceExample]) -> tuple[int, Tensor, Tensor]:
        num_choices = max(ex.num_choices for ex in examples)
        labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        return num_choices, labels, _choice_mask(examples, num_choices)

    def _encode_letter(self, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = self._common(examples)
        letter_ids = torch.tensor(self.letter_token_ids(num_choices), dtype=torch.long)
        prompts = [ex.letter_prompt for ex in examples]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        seqs = [
            _truncate_left(list(ids), self.max_length, bos)
            for ids in self.tokenizer(prompts)["input_ids"]
        ]
        for ex, seq in zip(examples, seqs, strict=True):
            if not seq:
                raise ScoringError(f"example {ex.uid!r}: the letter prompt has no tokens")
        side = self.padding_side
        ids, mask, width = _pad(seqs, self.pad_id, side)
        last = [_offset(len(s), width, side) + len(s) - 1 for s in seqs]
        return EncodedBatch(
            mode=self.mode,
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            choice_mask=choice_mask,
            position_ids=positions_from_mask(mask),
            last_positions=torch.tensor(last, dtype=torch.long),
            letter_ids=letter_ids,
            uids=tuple(ex.uid for ex in examples),
        )

    def _tokenize_unique(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """Token ids (no special tokens) of each distinct text, in one tokenizer call."""
        unique = sorted(set(texts))
        if not unique:
            return {}
        encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        return {text: list(ids) for text, ids in zip(unique, encoded, strict=True)}

    def _prefix_id(self) -> int:
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        return self.pad_id

    def _loglik_rows(
        self, examples: list[MultipleChoiceExample], num_choices: int
    ) -> list[tuple[list[int], int] | None]:
        """Per row ``question * C + choice``: (context + continuation ids, number of scored
        tokens at the end), or None for a missing choice."""
        pairs = []
        for ex in examples:
            for context, continuation in ex.loglik_pairs:
                # lm-eval: trailing whitespace of the context moves to the continuation.
                stripped = context.rstrip()
                pairs.append((stripped, context[len(stripped) :] + continuation))
        table = self._tokenize_unique([text for pair in pairs for text in pair])
        rows: list[tuple[list[int], int] | None] = []
        pair_iter = iter(pairs)
        for ex in examples:
            for choice in range(num_choices):
                if choice >= ex.num_choices:
                    rows.append(None)
                    continue
                context, continuation = next(pair_iter)
                rows.append(self._loglik_row(table[context], table[continuation], ex.uid))
        return rows

    def _loglik_row(self, context: list[int], continuation: list[int], uid: str):
        if not continuation:
            raise ScoringError(f"example {uid!r}: a continuation has no tokens")
        if not context:
            context = [self._prefix_id()]
        full = (context + continuation)[-(self.max_length + 1) :]
        return full, min(len(continuation), len(full) - 1)

    def _encode_loglik(self, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = self._common(examples)
        rows = self._loglik_rows(examples, num_choices)
        seqs = [row[0][:-1] if row is not None else [self.pad_id] for row in rows]
        side = self.padding_side
        ids, mask, width = _pad(seqs, self.pad_id, side)
        k_max = max([1] + [row[1] for row in rows if row is not None])
        positions = torch.zeros((len(rows), k_max), dtype=torch.long)
        targets = torch.zeros((len(rows), k_max), dtype=torch.long)
        target_mask = torch.zeros((len(rows), k_max), dtype=torch.bool)
        for r, row in enumerate(rows):
            if row is None:
                continue
            full, k = row
            end = _offset(len(full) - 1, width, side) + len(full) - 1
            positions[r, :k] = torch.arange(end - k, end)
            targets[r, :k] = torch.tensor(full[-k:], dtype=torch.long)
            target_mask[r, :k] = True
        return EncodedBatch(
            mode=self.mode,
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            choice_mask=choice_mask,
            position_ids=positions_from_mask(mask),
            target_positions=positions,
            target_ids=targets,
            target_mask=target_mask,
            uids=tuple(ex.uid for ex in examples),
        )

    def _encode_pairs(self, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = self._common(examples)
        firsts, seconds = [], []
        for ex in examples:
            question = ex.question if ex.context is None else f"{ex.context} {ex.question}"
            padded = list(ex.choices) + [""] * (num_choices - ex.num_choices)
            firsts.extend([question] * num_choices)
            seconds.extend(padded)
        with _truncation_side(self.tokenizer, "left"):
            enc = self.tokenizer(
                firsts,
                seconds,
                truncation="only_first",
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        shape = (len(examples), num_choices, -1)
        token_types = enc.get("token_type_ids")
        return EncodedBatch(
            mode=self.mode,
            input_ids=enc["input_ids"].view(shape),
            attention_mask=enc["attention_mask"].view(shape),
            labels=labels,
            choice_mask=choice_mask,
            token_type_ids=None if token_types is None else token_types.view(shape),
            uids=tuple(ex.uid for ex in examples),
        )

    # ------------------------------------------------------------------ logits

    def logits(self, model: Any, batch: EncodedBatch, num_draws: int = 1) -> Tensor:
        """Choice logits ``[num_draws, B, C]`` in float32; missing choices get a large negative
        finite value. The batch is moved to the model's device when needed."""
        if batch.mode != self.mode:
            raise ScoringError(f"batch was encoded for {batch.mode!r}, scorer is {self.mode!r}")
        if num_draws < 1:
            raise ScoringError(f"num_draws must be positive, got {num_draws}")
        device = _model_device(model)
        if device is not None and device != batch.device:
            batch = batch.to(device)
        scores = self._scores(model, batch, num_draws).float()
        scores = scores.view(num_draws, batch.num_examples, batch.num_choices)
        return scores.masked_fill(~batch.choice_mask, masked_fill_value(scores.dtype))

    @torch.no_grad()
    def question_features(self, model: Any, batch: EncodedBatch) -> Tensor:
        """One vector ``[B, H]`` per question: its rows' hidden states at the end of the
        frozen prefix (the input embeddings when every block is adapted), averaged over the
        real tokens. Inputs of amortized guides; served from the prefix cache."""
        device = _model_device(model)
        if device is not None and device != batch.device:
            batch = batch.to(device)
        plan = self._plan(model, batch)
        rows = plan.rows
        if plan.lower is not None:
            hidden = plan.lower
        else:
            hidden = model.get_input_embeddings()(rows.input_ids.reshape(-1, rows.input_ids.shape[-1]))
        mask = rows.attention_mask.reshape(hidden.shape[:2]).to(hidden.dtype)
        summed = (hidden * mask.unsqueeze(-1)).sum(1).view(batch.num_examples, -1, hidden.shape[-1])
        counts = mask.sum(1).view(batch.num_examples, -1).sum(1).clamp_min(1.0)
        return (summed.sum(1) / counts.unsqueeze(-1)).float()

    def _scores(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        """Per-row scores of all draws, draw-major, computed chunk by chunk."""
        plan = self._plan(model, batch)
        per_chunk = self._draws_per_chunk(model, batch, plan.rows, num_draws, plan.prefix)
        layers = _gated_layers(model) if per_chunk < num_draws else []
        parts = []
        for start, count in _chunks(num_draws, per_chunk):
            with _draw_slice(layers, num_draws, start, count):
                parts.append(self._chunk_scores(model, batch, plan, count))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _chunk_scores(self, model: Any, batch: EncodedBatch, plan: _Plan, num_draws: int) -> Tensor:
        """Per-row scores of one chunk of draws."""
        if plan.prefix is None:
            return self._full_scores(model, batch, num_draws)
        select = lambda h: self._pick(batch, h, num_draws, plan.packed)  # noqa: E731
        picked = plan.prefix.upper(plan.lower, plan.context, num_draws, select)
        return self._head(model, batch, picked, num_draws)

    def _full_scores(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        if self.mode == "encoder":
            return self._encoder_logits(model, batch, num_draws)
        hidden = self._hidden_states(model, batch, num_draws)
        return self._head(model, batch, self._pick(batch, hidden, num_draws), num_draws)

    def _pick(
        self, batch: EncodedBatch, hidden: Tensor, num_draws: int, packed: PackedRows | None = None
    ) -> Tensor:
        """The states the head reads: the last real position ``[D * B, 1, H]`` (letter), the
        first ``[D * R, 1, H]`` (encoder), or per question the ``N`` positions predicting its
        continuation tokens ``[D * B, N, H]`` (choice_loglik, see :func:`_scored_slots`; from
        packed rows ``[D * B, L, H]`` when ``packed``)."""
        if self.mode == "encoder":
            return hidden[:, :1]
        if self.mode == "letter":
            positions = batch.last_positions.unsqueeze(-1)  # [B, 1]
        else:
            positions = self._loglik_columns(batch, hidden.shape[1], packed)  # [B, N]
            hidden = hidden.reshape(positions.shape[0] * num_draws, -1, hidden.shape[-1])
        index = _repeat(positions, num_draws).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index)

    def _loglik_columns(self, batch: EncodedBatch, width: int, packed: PackedRows | None) -> Tensor:
        """Per question, the columns ``[B, N]`` of its scored slots in its packed row, or in
        its ``C`` rows of ``width`` laid end to end."""
        order, _ = _scored_slots(batch)
        if packed is not None:
            return packed.columns(batch.target_positions).gather(1, order)
        positions = batch.target_positions.reshape(batch.num_examples, -1).gather(1, order)
        return order // batch.target_positions.shape[-1] * width + positions

    def _head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        head = {
            "letter": self._letter_head,
            "choice_loglik": self._loglik_head,
            "encoder": self._encoder_head,
        }[self.mode]
        return head(model, batch, picked, num_draws)

    # ------------------------------------------------------------------ fast paths

    def _plan(self, model: Any, batch: EncodedBatch) -> _Plan:
        """The prefix, rows and block-``start`` states a batch runs from."""
        rows = self._rows(batch)
        if not self.reuse_prefix:
            return _Plan(None, rows)
        packed = self._pack(batch, rows)
        prefix = self._prefix(model, allow_empty=packed is not None)
        if prefix is None:
            return _Plan(None, rows)
        if packed is None:
            context = prefix.context(rows)
            return _Plan(prefix, rows, context, self._lower(model, prefix, rows, context, batch))
        context = prefix.context(packed.rows)
        lower = self._lower_packed(model, prefix, rows, packed, context, batch)
        return _Plan(prefix, packed.rows, context, lower, packed)

    def _pack(self, batch: EncodedBatch, rows: Rows) -> PackedRows | None:
        """The question-packed rows of a ``choice_loglik`` batch, when sharing pays."""
        if self.mode != "choice_loglik" or not self.share_context:
            return None
        limit = batch.target_positions[:, 0]
        return pack_rows(rows, batch.num_choices, limit, batch.choice_mask.reshape(-1))

    def _prefix(self, model: Any, allow_empty: bool = False) -> FrozenPrefix | None:
        """The frozen prefix of ``model`` when it fits this mode's head, else ``None``
        (``allow_empty``: see :meth:`FrozenPrefix.build`)."""
        prefix = FrozenPrefix.build(model, max_start=self.prefix_start, allow_empty=allow_empty)
        if prefix is None:
            return None
        if self.mode == "encoder":
            heads = ("dropout", "classifier")
            ok = isinstance(prefix.stack, BertStack) and all(hasattr(model, h) for h in heads)
            body = getattr(model, "base_model", None)
            ok = ok and body is prefix.stack.body and getattr(body, "pooler", None) is not None
        else:
            ok = isinstance(prefix.stack, LlamaStack) and prefix.stack.body is decoder_body(model)
        return prefix if ok else None

    def _rows(self, batch: EncodedBatch) -> Rows:
        """One copy of the rows entering the network (``[B, C, T]`` flattened)."""
        flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731
        return Rows(
            flat(batch.input_ids),
            flat(batch.attention_mask),
            flat(batch.position_ids),
            flat(batch.token_type_ids),
        )

    def _row_keys(self, batch: EncodedBatch, num_rows: int) -> list[Hashable] | None:
        """``(uid, row within the question)`` per row, or ``None`` without unique uids."""
        uids = batch.uids
        if uids is None or len(uids) != batch.num_examples or len(set(uids)) != len(uids):
            return None
        per = num_rows // batch.num_examples
        return [(uids[r // per], r % per) for r in range(num_rows)]

    def _lower(
        self, model: Any, prefix: FrozenPrefix, rows: Rows, context: dict, batch: EncodedBatch
    ) -> Tensor:
        """Block-``k`` states, through the cache when exact (padding-independent rows)."""
        keys = self._cache_keys(model, prefix, rows, batch)
        if keys is None:
            return prefix.lower(rows, context)
        return lower_with_cache(prefix, rows, context, keys, self.prefix_cache)

    def _lower_packed(
        self,
        model: Any,
        prefix: FrozenPrefix,
        rows: Rows,
        packed: PackedRows,
        context: dict,
        batch: EncodedBatch,
    ) -> Tensor:
        """Packed block-``k`` states ``[Q, L, H]``; the cache holds the unpacked ``rows``."""
        keys = self._cache_keys(model, prefix, rows, batch) if prefix.start > 0 else None
        if keys is None:
            return prefix.lower(packed.rows, context)
        return packed_lower_with_cache(prefix, rows, packed, context, keys, self.prefix_cache)

    def _cache_keys(
        self, model: Any, prefix: FrozenPrefix, rows: Rows, batch: EncodedBatch
    ) -> list[Hashable] | None:
        """The cache keys of ``rows`` when the cache is usable and exact for them (the cache
        is emptied first when it was filled on other base weights or another split)."""
        cache = self.prefix_cache
        keys = self._row_keys(batch, rows.num_rows)
        if cache is None or keys is None or not prefix.stack.padding_independent(rows):
            return None
        owner = prefix_fingerprint(prefix)
        if owner != self._cache_owner:
            cache.clear()
            self._cache_owner = owner
        return keys

    def _draws_per_chunk(
        self,
        model: Any,
        batch: EncodedBatch,
        rows: Rows,
        num_draws: int,
        prefix: FrozenPrefix | None,
    ) -> int:
        """How many draws fit ``draw_chunk_mb`` by :func:`_draw_bytes`'s estimate."""
        budget_mb = self.draw_chunk_mb
        if budget_mb == "auto":
            cpu = rows.input_ids.device.type == "cpu"
            budget_mb = AUTO_CHUNK_MB["cpu" if cpu else "accelerator"]
        if budget_mb is None or num_draws == 1:
            return num_draws
        if prefix is not None:
            blocks = prefix.num_top_blocks
        else:
            blocks = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 12)
        head = rows.num_rows
        if batch.target_mask is not None:
            head = int(_scored_slots(batch)[1].numel())
        width = int(rows.input_ids.shape[-1])
        grad = torch.is_grad_enabled()
        per_draw = _draw_bytes(model, rows.num_rows, width, blocks, head, grad)
        return max(1, min(num_draws, int(float(budget_mb) * 2**20) // per_draw))

    def _hidden_states(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        """Final hidden states ``[num_draws * rows, T, H]`` of the decoder body."""
        body = decoder_body(model)
        kwargs: dict[str, Any] = {
            "input_ids": _repeat(batch.input_ids, num_draws),
            "attention_mask": _repeat(batch.attention_mask, num_draws),
        }
        if batch.position_ids is not None and _accepts(body, "position_ids"):
            kwargs["position_ids"] = _repeat(batch.position_ids, num_draws)
        if _accepts(body, "use_cache"):
            kwargs["use_cache"] = False
        out = body(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _letter_head(
        self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int
    ) -> Tensor:
        vocab_logits = output_head(model)(picked[:, 0])  # [D * B, V]
        return vocab_logits.index_select(-1, batch.letter_ids)

    def _loglik_head(
        self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int
    ) -> Tensor:
        """Summed continuation log-probabilities ``[D * R]`` from the states ``[D * B, N, H]``
        of each question's scored slots. When the head treats a draw's rows alike it runs on
        the real slots alone, ``[D, n, H]``."""
        order, valid = _scored_slots(batch)
        targets = batch.target_ids.reshape(batch.num_examples, -1).gather(1, order)
        head = output_head(model)
        if _draw_grouped(head, num_draws):
            real = valid.reshape(-1)
            states = picked.reshape(num_draws, real.numel(), -1)[:, real]
            chosen = _token_log_probs(head, states, targets[valid].expand(num_draws, -1))
            token_log_probs = chosen.new_zeros(num_draws, real.numel())
            token_log_probs[:, real] = chosen
            token_log_probs = token_log_probs.view(-1, valid.shape[1])
        else:
            token_log_probs = _token_log_probs(head, picked, _repeat(targets, num_draws))
            token_log_probs = token_log_probs.masked_fill(~_repeat(valid, num_draws), 0)
        choices = _repeat(order // batch.target_ids.shape[-1], num_draws)
        scores = token_log_probs.new_zeros(choices.shape[0], batch.num_choices)
        return scores.scatter_add(1, choices, token_log_probs).reshape(-1)

    def _encoder_logits(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        kwargs = {
            "input_ids": _repeat(batch.input_ids, num_draws),
            "attention_mask": _repeat(batch.attention_mask, num_draws),
        }
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = _repeat(batch.token_type_ids, num_draws)
        out = model(**kwargs)
        return out.logits if hasattr(out, "logits") else out[0]

    def _encoder_head(
        self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int
    ) -> Tensor:
        """The multiple-choice head (pooler, dropout, classifier) on the first-token states
        ``[D * B * C, 1, H]``; returns ``[D * B, C]``."""
        pooled = model.base_model.pooler(picked)
        return model.classifier(model.dropout(pooled)).view(-1, batch.num_choices)
