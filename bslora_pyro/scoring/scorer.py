"""The scorer: encode questions in one mode and compute their choice logits, with fast paths.

Row convention (the gated LoRA layers rely on it): with ``num_draws`` draws every tensor
reaching the network has leading dimension ``num_draws * m``, draw-major (``x.view(num_draws,
m, ...)[d]`` is draw ``d``'s copy); inside a draw rows follow the questions, and in
``choice_loglik`` and ``encoder`` modes row ``question * C + choice``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import tokens
from bslora_pyro.scoring.batch import LETTERS, EncodedBatch, ScoringError, masked_fill_value
from bslora_pyro.scoring.draws import (
    chunks,
    draw_bytes,
    draw_slice,
    fitting_draws,
    head_bytes,
)
from bslora_pyro.scoring.modes import MODES, SCORING_MODES, ScoringMode
from bslora_pyro.scoring.modes.letter import find_letter_id
from bslora_pyro.scoring.modes.loglik import scored_slots
from bslora_pyro.scoring.network import gated_layers, model_device
from bslora_pyro.scoring.prefix import (
    FrozenPrefix,
    PackedRows,
    PrefixCache,
    Rows,
    lower_with_cache,
    pack_rows,
    packed_lower_with_cache,
    prefix_fingerprint,
)


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
            fastest there), 4096 MB on accelerators; ``None``: all draws in one forward. From
            a frozen prefix the head then runs on the final states of as many draws as its
            own activations fit in the same budget (every draw, typically), so that its
            weight is read once rather than once per chunk.
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
        self.pad_id = tokens.pad_id(tokenizer)
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
    def scoring_mode(self) -> ScoringMode:
        """The object of :attr:`mode` (``bslora_pyro.scoring.modes``)."""
        return SCORING_MODES[self.mode]

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "left") or "left"

    # ------------------------------------------------------------------ letters

    def letter_token_id(self, letter: str) -> int:
        """The single token id of ``" A"`` (preferred) or ``"A"``; checked once per letter."""
        if letter not in self._letter_ids:
            self._letter_ids[letter] = find_letter_id(self.tokenizer, letter)
        return self._letter_ids[letter]

    def letter_token_ids(self, num_choices: int, words: tuple[str, ...] | None = None
                         ) -> list[int]:
        """Token ids of the first ``num_choices`` answer letters, or of the answer ``words``
        (each a single token, ``" word"`` preferred)."""
        return [self.letter_token_id(word) for word in words or LETTERS[:num_choices]]

    # ------------------------------------------------------------------ encoding

    def encode(self, examples: Sequence[MultipleChoiceExample]) -> EncodedBatch:
        """Tokenise, truncate and pad ``examples`` into CPU tensors (pinned under CUDA)."""
        examples = list(examples)
        mode = self.scoring_mode
        mode.check(examples)
        return mode.encode(self, examples).pin_memory()

    # ------------------------------------------------------------------ logits

    def logits(self, model: Any, batch: EncodedBatch, num_draws: int = 1) -> Tensor:
        """Choice logits ``[num_draws, B, C]`` in float32; missing choices get a large negative
        finite value. The batch is moved to the model's device when needed."""
        if batch.mode != self.mode:
            raise ScoringError(f"batch was encoded for {batch.mode!r}, scorer is {self.mode!r}")
        if num_draws < 1:
            raise ScoringError(f"num_draws must be positive, got {num_draws}")
        device = model_device(model)
        if device is not None and device != batch.device:
            batch = batch.to(device)
        scores = self._scores(model, batch, num_draws).float()
        scores = scores.view(num_draws, batch.num_examples, batch.num_choices)
        return scores.masked_fill(~batch.choice_mask, masked_fill_value(scores.dtype))

    @torch.no_grad()
    def question_features(self, model: Any, batch: EncodedBatch) -> Tensor:
        """One vector ``[B, H]`` per question, the input of amortized guides: hidden states
        at the end of the frozen prefix (the input embeddings when every block is adapted)
        averaged over the question's own tokens. In ``choice_loglik`` modes these are its
        context tokens (up to the one predicting a continuation's first token) in choice
        0's row, so the features do not depend on the choices, on whether the batch was
        packed, or on the other questions of the batch; in other modes, every real token
        of its rows. Served from the prefix cache."""
        device = model_device(model)
        if device is not None and device != batch.device:
            batch = batch.to(device)
        plan = self._plan(model, batch)
        rows = self._rows(batch)  # unpacked: one row per question (and choice)
        if plan.lower is None:
            hidden = model.get_input_embeddings()(rows.input_ids)
        else:
            hidden = plan.lower if plan.packed is None else plan.packed.unpack(plan.lower)
        mask = rows.attention_mask.reshape(hidden.shape[:2]).to(hidden.dtype)
        per = rows.num_rows // batch.num_examples
        if batch.target_positions is not None:  # context tokens of choice 0's row
            first = batch.target_positions.reshape(rows.num_rows, -1)[:, 0]
            columns = torch.arange(mask.shape[1], device=mask.device)
            mask = mask * (columns[None, :] <= first[:, None]).to(mask.dtype)
            hidden = hidden.view(batch.num_examples, per, *hidden.shape[1:])[:, 0]
            mask = mask.view(batch.num_examples, per, -1)[:, 0]
            per = 1
        summed = (hidden * mask.unsqueeze(-1)).sum(1).view(batch.num_examples, per, -1)
        counts = mask.sum(1).view(batch.num_examples, -1).sum(1).clamp_min(1.0)
        return (summed.sum(1) / counts.unsqueeze(-1)).float()

    def _scores(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        """Per-row scores of all draws, draw-major. The network runs chunk by chunk of draws;
        from a frozen prefix the head then runs on the final states of all draws at once
        (in chunks of its own size): its weight is read once per chunk, not per draw chunk."""
        plan = self._plan(model, batch)
        per_chunk = self._draws_per_chunk(model, batch, plan.rows, num_draws, plan.prefix)
        layers = gated_layers(model)
        mode = self.scoring_mode
        if plan.prefix is None:
            return self._in_chunks(
                layers, num_draws, per_chunk,
                lambda start, count: mode.full_scores(model, batch, count),
            )
        states = self._in_chunks(
            layers, num_draws, per_chunk,
            lambda start, count: self._chunk_states(batch, plan, count),
        )
        rows = states.shape[0] // num_draws
        per_head = self._head_draws_per_chunk(model, batch, plan.rows, num_draws)
        return self._in_chunks(
            layers, num_draws, per_head,
            lambda start, count: mode.head(
                model, batch, states[start * rows : (start + count) * rows], count
            ),
        )

    @staticmethod
    def _in_chunks(
        layers: list, num_draws: int, per_chunk: int, run: Callable[[int, int], Tensor]
    ) -> Tensor:
        """``run(start, count)`` per chunk of draws (each with only its draws' gates on the
        gated layers), concatenated draw-major."""
        if per_chunk >= num_draws:
            return run(0, num_draws)
        parts = []
        for start, count in chunks(num_draws, per_chunk):
            with draw_slice(layers, num_draws, start, count):
                parts.append(run(start, count))
        return torch.cat(parts)

    def _chunk_states(self, batch: EncodedBatch, plan: _Plan, num_draws: int) -> Tensor:
        """The final states the head reads, of one chunk of draws (from the frozen prefix)."""
        mode = self.scoring_mode
        select = lambda h: mode.pick(batch, h, num_draws, plan.packed)  # noqa: E731
        return plan.prefix.upper(plan.lower, plan.context, num_draws, select)

    def _draws_per_chunk(
        self,
        model: Any,
        batch: EncodedBatch,
        rows: Rows,
        num_draws: int,
        prefix: FrozenPrefix | None,
    ) -> int:
        """How many draws fit ``draw_chunk_mb`` by :func:`~.draws.draw_bytes`'s estimate."""

        def per_draw() -> int:
            if prefix is not None:
                blocks = prefix.num_top_blocks
                head = 0  # the head runs on its own (:meth:`_head_draws_per_chunk`)
            else:
                config = getattr(model, "config", None)
                blocks = int(getattr(config, "num_hidden_layers", 0) or 12)
                head = self._head_rows(batch, rows)
            width = int(rows.input_ids.shape[-1])
            return draw_bytes(model, rows.num_rows, width, blocks, head, torch.is_grad_enabled())

        cpu = rows.input_ids.device.type == "cpu"
        return fitting_draws(self.draw_chunk_mb, num_draws, cpu, per_draw)

    def _head_draws_per_chunk(
        self, model: Any, batch: EncodedBatch, rows: Rows, num_draws: int
    ) -> int:
        """How many draws of the head alone fit ``draw_chunk_mb`` (:func:`~.draws.head_bytes`)."""
        cpu = rows.input_ids.device.type == "cpu"
        per_draw = lambda: head_bytes(model, self._head_rows(batch, rows))  # noqa: E731
        return fitting_draws(self.draw_chunk_mb, num_draws, cpu, per_draw)

    @staticmethod
    def _head_rows(batch: EncodedBatch, rows: Rows) -> int:
        """Positions the head reads per draw: the scored continuation tokens in
        ``choice_loglik`` modes, else one per row."""
        if batch.target_mask is not None:
            return int(scored_slots(batch)[1].numel())
        return rows.num_rows

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
        if not self.scoring_mode.shares_context or not self.share_context:
            return None
        limit = batch.target_positions[:, 0]
        return pack_rows(rows, batch.num_choices, limit, batch.choice_mask.reshape(-1))

    def _prefix(self, model: Any, allow_empty: bool = False) -> FrozenPrefix | None:
        """The frozen prefix of ``model`` when it fits this mode's head, else ``None``
        (``allow_empty``: see :meth:`FrozenPrefix.build`)."""
        prefix = FrozenPrefix.build(model, max_start=self.prefix_start, allow_empty=allow_empty)
        if prefix is None:
            return None
        return prefix if self.scoring_mode.prefix_fits(model, prefix) else None

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
