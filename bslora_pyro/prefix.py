"""Frozen-prefix reuse: run the blocks below the lowest adapter once, the adapted top per draw.

When every gated LoRA layer (and every trainable parameter) sits in blocks ``>= k``, the hidden
states entering block ``k`` do not depend on gates or factors. :class:`FrozenPrefix` computes
them once per batch under ``torch.no_grad()`` (:meth:`FrozenPrefix.lower`) and runs blocks
``>= k`` plus the final norm on hidden states replicated draw-major (:meth:`FrozenPrefix.upper`);
the last block's feed-forward part runs only at the positions the head reads. :class:`PrefixCache`
keeps the layer-``k`` states of each row's real tokens across training steps, bounded by a
budget in MB.

:class:`PackedRows` packs the choice rows of a question into one row (the tokens they share
once, then each choice's own tokens) with a block mask that keeps every hidden state exact; the
blocks then run on far fewer tokens (``choice_loglik`` scoring, Llama stacks).

Supported stacks: Llama-family decoders (rotary embeddings, causal + padding mask built with
transformers' own mask utilities) and BERT encoders (bidirectional padding mask). Anything else,
an adapter (or forward hook) in block 0, or an active dropout below the first adapted block
gives ``None`` from :meth:`FrozenPrefix.build`, and callers run the plain full forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.adapter.gated_lora import GatedLoraLinear

logger = logging.getLogger(__name__)

LLAMA_TYPES = frozenset({"llama"})
BERT_TYPES = frozenset({"bert"})
MASK_IMPLEMENTATIONS = frozenset({"eager", "sdpa"})


# ---------------------------------------------------------------------------- rows


@dataclass
class Rows:
    """The ``[R, T]`` token rows entering the network (one copy, before draw replication)."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None = None
    token_type_ids: Tensor | None = None
    visible: Tensor | None = None  # [R, T, T] bool: key j visible from query i (packed rows)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: Tensor) -> Rows:
        """The rows at ``index`` (same padded width)."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return Rows(
            pick(self.input_ids),
            pick(self.attention_mask),
            pick(self.position_ids),
            pick(self.token_type_ids),
            pick(self.visible),
        )

    def signatures(self) -> list[Tensor]:
        """Per row, the CPU tensor of everything the prefix reads at real positions (token
        ids, positions, token types); a cached entry is valid only for an equal signature."""
        parts = [self.input_ids, self.position_ids, self.token_type_ids]
        stacked = torch.stack([p for p in parts if p is not None], dim=-1).cpu()
        mask = self.attention_mask.bool().cpu()
        return [stacked[r][mask[r]] for r in range(self.num_rows)]


def repeat_rows(value: Any, num_rows: int, times: int) -> Any:
    """Draw-major replication of every tensor whose leading dimension is ``num_rows``
    (tuples are handled element-wise; broadcast tensors and ``None`` pass through)."""
    if times == 1 or value is None:
        return value
    if isinstance(value, tuple):
        return tuple(repeat_rows(v, num_rows, times) for v in value)
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == num_rows:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    return value


# ---------------------------------------------------------------------------- stacks


Selector = Callable[[Tensor], Tensor]


class Stack:
    """One architecture's embeddings, blocks and final norm, called block by block."""

    layers: nn.ModuleList
    config: Any

    def embed_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def embed(self, rows: Rows) -> Tensor:
        raise NotImplementedError

    def context(self, rows: Rows, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Keyword arguments shared by every block (masks, position embeddings)."""
        raise NotImplementedError

    def block(self, index: int, hidden: Tensor, context: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def last_block(
        self, index: int, hidden: Tensor, context: dict[str, Any], select: Selector
    ) -> Tensor:
        """Block ``index`` (the last) with everything after attention computed only at the
        positions ``select`` keeps; the generic version selects after the whole block."""
        return select(self.block(index, hidden, context))

    def finish(self, hidden: Tensor) -> Tensor:
        return hidden

    def padding_independent(self, rows: Rows) -> bool:
        """True when the hidden states at real positions do not depend on the padding."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.embed_modules()[0].parameters()).dtype


class LlamaStack(Stack):
    """``LlamaModel``-like bodies: ``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``."""

    def __init__(self, body: nn.Module) -> None:
        self.body = body
        self.layers = body.layers
        self.config = body.config

    def embed_modules(self) -> list[nn.Module]:
        return [self.body.embed_tokens, self.body.rotary_emb]

    def embed(self, rows: Rows) -> Tensor:
        return self.body.embed_tokens(rows.input_ids)

    def context(self, rows: Rows, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        from transformers.masking_utils import create_causal_mask

        shape = (*rows.input_ids.shape, 1)
        probe = torch.empty(shape, dtype=dtype, device=device)
        positions = rows.position_ids
        if positions is None:
            positions = torch.arange(shape[1], device=device).unsqueeze(0)
        if rows.visible is not None:
            mask = self._block_mask(rows.visible, dtype)
        else:
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=probe,
                attention_mask=rows.attention_mask,
                cache=None,
                position_ids=positions,
            )
        return {
            "attention_mask": mask,
            "position_embeddings": self.body.rotary_emb(probe, position_ids=positions),
            "position_ids": positions,
        }

    def _block_mask(self, visible: Tensor, dtype: torch.dtype) -> Tensor:
        """``[R, 1, T, T]`` mask of ``visible``: boolean for SDPA, additive for eager."""
        mask = visible.unsqueeze(1)
        if self.config._attn_implementation == "sdpa":
            return mask
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill(~mask, torch.finfo(dtype).min)

    def block(self, index: int, hidden: Tensor, context: dict[str, Any]) -> Tensor:
        out = self.layers[index](hidden, **context)
        return out[0] if isinstance(out, tuple) else out

    def last_block(
        self, index: int, hidden: Tensor, context: dict[str, Any], select: Selector
    ) -> Tensor:
        layer = self.layers[index]
        if type(layer).__name__ != "LlamaDecoderLayer":
            return super().last_block(index, hidden, context, select)
        # LlamaDecoderLayer.forward, with the MLP at the selected positions only
        attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **context)
        picked = select(hidden + attended)
        return picked + layer.mlp(layer.post_attention_layernorm(picked))

    def finish(self, hidden: Tensor) -> Tensor:
        return self.body.norm(hidden)

    def padding_independent(self, rows: Rows) -> bool:
        return rows.position_ids is not None


class BertStack(Stack):
    """``BertModel``-like encoders: ``embeddings``, ``encoder.layer`` (no final norm)."""

    def __init__(self, body: nn.Module) -> None:
        self.body = body
        self.layers = body.encoder.layer
        self.config = body.config

    def embed_modules(self) -> list[nn.Module]:
        return [self.body.embeddings]

    def embed(self, rows: Rows) -> Tensor:
        return self.body.embeddings(input_ids=rows.input_ids, token_type_ids=rows.token_type_ids)

    def context(self, rows: Rows, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        from transformers.masking_utils import create_bidirectional_mask

        if rows.visible is not None:
            raise ValueError("BERT stacks do not run packed rows")
        probe = torch.empty((*rows.input_ids.shape, 1), dtype=dtype, device=device)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=probe, attention_mask=rows.attention_mask
        )
        return {"attention_mask": mask}

    def block(self, index: int, hidden: Tensor, context: dict[str, Any]) -> Tensor:
        out = self.layers[index](hidden, context["attention_mask"])
        return out[0] if isinstance(out, tuple) else out

    def last_block(
        self, index: int, hidden: Tensor, context: dict[str, Any], select: Selector
    ) -> Tensor:
        layer = self.layers[index]
        if type(layer).__name__ != "BertLayer" or layer.is_decoder:
            return super().last_block(index, hidden, context, select)
        # BertLayer.forward, with the feed-forward part at the selected positions only
        attended = layer.attention(hidden, context["attention_mask"])[0]
        return layer.feed_forward_chunk(select(attended))

    def padding_independent(self, rows: Rows) -> bool:
        # absolute positions count from column 0: exact only when every row starts there
        mask = rows.attention_mask.bool()
        return bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())


def _llama_body(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and all(
            hasattr(candidate, key) for key in ("embed_tokens", "layers", "norm", "rotary_emb")
        ):
            return candidate
    return None


def find_stack(model: nn.Module) -> Stack | None:
    """The block-by-block view of a supported model, else ``None``."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", "eager") not in MASK_IMPLEMENTATIONS:
        return None
    model_type = getattr(config, "model_type", None)
    if model_type in LLAMA_TYPES:
        body = _llama_body(model)
        if body is not None and not getattr(config, "sliding_window", None):
            return LlamaStack(body)
    if model_type in BERT_TYPES:
        body = getattr(model, "bert", model)
        if hasattr(body, "embeddings") and hasattr(body, "encoder"):
            if not getattr(body.config, "is_decoder", False):
                return BertStack(body)
    return None


# ---------------------------------------------------------------------------- prefix


def _needs_block(module: nn.Module, trainable: bool) -> bool:
    """A module whose output may differ between draws: it holds an adapter or a forward hook
    (unknown behaviour), or, when ``trainable``, a parameter that autograd must reach."""
    for m in module.modules():
        if isinstance(m, GatedLoraLinear) or m._forward_hooks or m._forward_pre_hooks:
            return True
    return trainable and any(p.requires_grad for p in module.parameters())


def _stochastic(module: nn.Module) -> bool:
    """An active dropout (module or attention probability) somewhere inside ``module``."""
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, nn.Dropout) and m.p > 0:
            return True
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0:
            return True
    return False


def first_adapted_block(stack: Stack, trainable: bool = True) -> int:
    """Index of the lowest block holding an adapter or a hook (or, when ``trainable``, a
    parameter that requires grad): 0 for the embeddings, ``len(layers)`` when no block does."""
    if any(_needs_block(m, trainable) for m in stack.embed_modules()):
        return 0
    for index, layer in enumerate(stack.layers):
        if _needs_block(layer, trainable):
            return index
    return len(stack.layers)


class FrozenPrefix:
    """Embeddings and blocks ``< start`` run once, without autograd; blocks ``>= start`` and
    the final norm run on draw-replicated hidden states."""

    def __init__(self, stack: Stack, start: int) -> None:
        self.stack = stack
        self.start = start

    @classmethod
    def build(
        cls, model: nn.Module, max_start: int | None = None, allow_empty: bool = False
    ) -> FrozenPrefix | None:
        """A prefix for ``model``, or ``None`` when reuse would not be exact or would not help
        (unsupported architecture, adapter in block 0, active dropout below the adapters).
        Under autograd, parameters that require grad count like adapters. ``max_start`` caps
        the split so that runs with and without adapters share cached states. With
        ``allow_empty`` an adapter in block 0 gives an empty prefix (``start == 0``: only the
        embeddings, run under autograd) unless the embeddings hold an adapter or a hook."""
        stack = find_stack(model)
        if stack is None:
            return None
        start = first_adapted_block(stack, trainable=torch.is_grad_enabled())
        if max_start is not None:
            start = min(start, max_start)
        plain_embeddings = not any(_needs_block(m, False) for m in stack.embed_modules())
        if start == 0 and not (allow_empty and plain_embeddings):
            return None
        lower = [*stack.embed_modules(), *stack.layers[:start]]
        if any(_stochastic(m) for m in lower):
            return None
        return cls(stack, start)

    @property
    def num_top_blocks(self) -> int:
        return len(self.stack.layers) - self.start

    def context(self, rows: Rows) -> dict[str, Any]:
        return self.stack.context(rows, self.stack.dtype, rows.input_ids.device)

    def lower(self, rows: Rows, context: dict[str, Any] | None = None) -> Tensor:
        """Hidden states ``[R, T, H]`` entering block ``start`` (without autograd, except for
        an empty prefix: its embeddings may be trained)."""
        if self.start == 0:
            return self.stack.embed(rows)
        context = self.context(rows) if context is None else context
        with torch.no_grad():
            hidden = self.stack.embed(rows)
            for index in range(self.start):
                hidden = self.stack.block(index, hidden, context)
        return hidden

    def upper(
        self,
        hidden: Tensor,
        context: dict[str, Any],
        num_draws: int,
        select: Selector | None = None,
    ) -> Tensor:
        """Final hidden states ``[num_draws * R, T, H]`` (draw-major) from the block-``start``
        states ``hidden`` ``[R, T, H]``; with ``select`` (a position gather), only the selected
        ones, the last block's feed-forward part computed at those positions alone."""
        rows = hidden.shape[0]
        hidden = repeat_rows(hidden, rows, num_draws)
        context = {k: repeat_rows(v, rows, num_draws) for k, v in context.items()}
        last = len(self.stack.layers) - 1
        for index in range(self.start, last + 1):
            if select is not None and index == last:
                return self.stack.finish(self.stack.last_block(index, hidden, context, select))
            hidden = self.stack.block(index, hidden, context)
        return self.stack.finish(hidden if select is None else select(hidden))


# ---------------------------------------------------------------------------- packing


PACK_GAIN = 0.9  # pack only when the packed rows hold at most this share of the tokens


@dataclass
class PackedRows:
    """The ``C`` rows of each question packed into one row.

    A packed row holds the tokens its question's rows share (their longest common prefix, up
    to the first scored position) once, then each row's remaining tokens (its segment) in
    choice order, then padding. ``visible`` (in :attr:`rows`) lets a segment's tokens see the
    shared tokens and, causally, their own segment; positions continue from the shared
    prefix. Every real token thus gets the hidden state it has in its own row. Rows that are
    not real (missing choices) share nothing and are not seen by any other row.
    """

    rows: Rows  # [Q, L]
    num_choices: int
    column_index: Tensor  # [R, T]: the packed column of each unpacked token (0 for padding)
    gather_index: Tensor  # [Q, L]: the flat unpacked index of each packed token (0: padding)

    def pack(self, full: Tensor) -> Tensor:
        """``[R, T, ...]`` per-token values of the unpacked rows as ``[Q, L, ...]``."""
        return full.reshape(-1, *full.shape[2:])[self.gather_index]

    def unpack(self, packed: Tensor) -> Tensor:
        """``[Q, L, ...]`` packed values as ``[R, T, ...]`` (padding positions arbitrary)."""
        rows = torch.arange(self.column_index.shape[0], device=packed.device)
        start = (rows // self.num_choices * packed.shape[1])[:, None]
        return packed.reshape(-1, *packed.shape[2:])[start + self.column_index]

    def columns(self, positions: Tensor) -> Tensor:
        """Packed columns ``[Q, C * K]`` of the unpacked columns ``[R, K]``."""
        columns = self.column_index.gather(1, positions)
        return columns.reshape(-1, self.num_choices * positions.shape[1])


def pack_rows(
    rows: Rows, num_choices: int, limit: Tensor, real: Tensor, gain: float = PACK_GAIN
) -> PackedRows | None:
    """Pack ``rows`` ``[Q * C, T]`` (row ``question * C + choice``, contiguous real tokens,
    explicit positions) question by question. A row's shared prefix ends at or before column
    ``limit`` ``[R]`` (its first scored position, which thus stays in its own segment); rows
    where ``real`` ``[R]`` is False share nothing. ``None`` when the rows cannot be packed or
    the packed rows would hold more than ``gain`` of the tokens."""
    mask = rows.attention_mask.bool()
    start = _contiguous_start(mask)
    if rows.position_ids is None or start is None or rows.num_rows % num_choices:
        return None
    shared = _shared_lengths(rows.input_ids, mask, start, limit, real, num_choices)
    column, segment = _columns(mask, start, shared, real)
    width = int(column.max()) + 1
    if len(shared) * width > gain * mask.numel():
        return None
    row = torch.arange(len(mask), device=mask.device)
    owner = mask & ((segment != 0) | (row % num_choices == 0)[:, None])  # shared: choice 0's
    question = row // num_choices
    target = (question[:, None] * width + column)[owner]
    flat = torch.arange(mask.numel(), device=mask.device).view_as(mask)

    def scatter(values: Tensor, fill: int | bool) -> Tensor:
        packed = torch.full((len(shared) * width,), fill, dtype=values.dtype, device=mask.device)
        return packed.index_put_((target,), values[owner]).view(len(shared), width)

    gather = scatter(flat, 0)
    positions = rows.position_ids.reshape(-1)[gather]
    valid = scatter(mask, False)
    packed = Rows(
        input_ids=rows.input_ids.reshape(-1)[gather],
        attention_mask=valid.long(),
        position_ids=positions,
        visible=_visible(valid, scatter(segment, 0), positions),
    )
    return PackedRows(packed, num_choices, column, gather)


def _contiguous_start(mask: Tensor) -> Tensor | None:
    """The first real column of each row ``[R]``, or ``None`` when some row's real tokens
    are not contiguous."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    start = mask.long().argmax(1)
    end = start + mask.sum(1)
    contiguous = torch.equal(mask, (cols >= start[:, None]) & (cols < end[:, None]))
    return start if contiguous else None


def _shared_lengths(
    ids: Tensor, mask: Tensor, start: Tensor, limit: Tensor, real: Tensor, num_choices: int
) -> Tensor:
    """Per question ``[Q]``: how many leading tokens all its real rows share (each row's
    count capped at ``limit - start``; choice 0 is always real)."""
    width = ids.shape[1]
    cols = torch.arange(width, device=ids.device)
    aligned = ids.gather(1, (start[:, None] + cols).clamp(max=width - 1))
    inside = (cols < mask.sum(1, keepdim=True)).view(-1, num_choices, width)
    aligned = aligned.view(-1, num_choices, width)
    same = (aligned == aligned[:, :1]) & inside & inside[:, :1]
    common = torch.minimum(same.long().cumprod(-1).sum(-1).view(-1), limit - start)
    return torch.where(real, common, width).view(-1, num_choices).min(1).values


def _columns(mask: Tensor, start: Tensor, shared: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Per unpacked token ``[R, T]``: its packed column (0 for padding) and its segment: 0
    for shared tokens, ``c + 1`` for choice ``c`` (negated when that row is not real)."""
    num_rows, width = mask.shape
    num_choices = num_rows // len(shared)
    own = torch.where(real, shared.repeat_interleave(num_choices), 0)  # shared tokens per row
    segment_lengths = (mask.sum(1) - own).view(-1, num_choices)
    segment_starts = shared[:, None] + segment_lengths.cumsum(1) - segment_lengths
    offset = torch.arange(width, device=mask.device) - start[:, None]
    in_shared = offset < own[:, None]
    column = torch.where(in_shared, offset, segment_starts.view(-1, 1) + offset - own[:, None])
    choice = torch.arange(num_rows, device=mask.device) % num_choices + 1
    segment = torch.where(in_shared, 0, torch.where(real, choice, -choice)[:, None])
    return torch.where(mask, column, 0), segment


def _visible(valid: Tensor, segment: Tensor, positions: Tensor) -> Tensor:
    """``[Q, L, L]``: query ``i`` sees a real key ``j`` of its own segment, or a shared one
    when its segment is real, at a position up to its own; every position sees itself, so
    no query row is empty."""
    own = segment[:, :, None] == segment[:, None, :]
    shared_key = (segment == 0)[:, None, :] & (segment >= 0)[:, :, None]
    causal = positions[:, None, :] <= positions[:, :, None]
    visible = valid[:, None, :] & (own | shared_key) & causal
    return visible | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)


# ---------------------------------------------------------------------------- cache


class PrefixCache:
    """Block-``k`` hidden states of real tokens by row key, within ``budget_mb``.

    Entries are stored on ``device`` (CPU RAM by default) together with the row's signature
    (:meth:`Rows.signatures`) and served only when the signature matches. When the next entry
    would exceed the budget caching stops (logged once) and later misses are computed.
    """

    def __init__(self, budget_mb: float, device: torch.device | str = "cpu") -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self.device = torch.device(device)
        self.entries: dict[Hashable, tuple[Tensor, Tensor]] = {}
        self.nbytes = 0
        self.full = False
        self._estimated = False

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
        self.full = False

    def get(self, key: Hashable, signature: Tensor) -> Tensor | None:
        entry = self.entries.get(key)
        if entry is None or not torch.equal(entry[0], signature):
            return None
        return entry[1]

    def put(self, key: Hashable, signature: Tensor, hidden: Tensor) -> bool:
        """Store ``hidden`` ``[n, H]``; False (and no copy) when over budget."""
        self._log_estimate(hidden)
        old = self.entries.pop(key, None)
        if old is not None:
            self.nbytes -= _nbytes(old[1])
        size = _nbytes(hidden)
        if self.full or self.nbytes + size > self.budget_bytes:
            if not self.full:
                logger.warning(
                    "prefix cache full at %d rows (%.1f MB of %.1f MB): computing the rest",
                    len(self.entries),
                    self.nbytes / 2**20,
                    self.budget_bytes / 2**20,
                )
            self.full = True
            return False
        self.entries[key] = (signature, hidden.detach().to(self.device, copy=True))
        self.nbytes += size
        return True

    def _log_estimate(self, hidden: Tensor) -> None:
        if self._estimated:
            return
        self._estimated = True
        per_token = hidden.shape[-1] * hidden.element_size()
        logger.info(
            "prefix cache: %d bytes per token (hidden %d, %s); budget %.0f MB holds ~%d tokens",
            per_token,
            hidden.shape[-1],
            hidden.dtype,
            self.budget_bytes / 2**20,
            self.budget_bytes // max(1, per_token),
        )


def prefix_fingerprint(prefix: FrozenPrefix) -> tuple:
    """Identifies the frozen weights below ``prefix.start`` cheaply (class, source, and a
    strided sample of every parameter): fresh loads of the same checkpoint share it, and
    so their cached states; other or edited weights (merged adapters) change it. Edits
    that touch none of the sampled entries go unseen: clear the cache after such edits."""
    stack = prefix.stack
    modules = [*stack.embed_modules(), *stack.layers[: prefix.start]]
    sums = []
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                flat = param.detach().reshape(-1)
                sums.append(flat[:: max(1, flat.numel() // 64)].double().sum())
    checksum = float(torch.stack(sums).sum()) if sums else 0.0
    config = getattr(stack.body, "config", None)
    return (
        type(stack.body).__name__,
        getattr(config, "_name_or_path", None),
        prefix.start,
        checksum,
    )


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def lower_with_cache(
    prefix: FrozenPrefix,
    rows: Rows,
    context: dict[str, Any],
    keys: Sequence[Hashable],
    cache: PrefixCache,
) -> Tensor:
    """:meth:`FrozenPrefix.lower` with rows served from ``cache`` where possible; computed
    rows are stored. Padding positions of served rows are zero (never attended to)."""
    signatures = rows.signatures()
    hits = [cache.get(key, sig) for key, sig in zip(keys, signatures, strict=True)]
    missing = [r for r, hit in enumerate(hits) if hit is None]
    if len(missing) == len(hits):
        hidden = prefix.lower(rows, context)
    else:
        hidden = _assemble(prefix, rows, hits, missing)
    if missing and not cache.full:
        _store(cache, rows, hidden, [(r, keys[r], signatures[r]) for r in missing])
    return hidden


def packed_lower_with_cache(
    prefix: FrozenPrefix,
    rows: Rows,
    packed: PackedRows,
    context: dict[str, Any],
    keys: Sequence[Hashable],
    cache: PrefixCache,
) -> Tensor:
    """Packed block-``start`` states ``[Q, L, H]`` of the unpacked ``rows``: questions whose
    rows are all cached are packed from the cache, the others are computed packed (``context``
    is the packed rows' block context) and their missing rows stored."""
    signatures = rows.signatures()
    hits = [cache.get(key, sig) for key, sig in zip(keys, signatures, strict=True)]
    missing = [r for r, hit in enumerate(hits) if hit is None]
    if len(missing) < len(hits):
        hidden = packed.pack(_served(rows, hits))
    if missing:
        questions = sorted({r // packed.num_choices for r in missing})
        if len(questions) == packed.rows.num_rows:
            hidden = prefix.lower(packed.rows, context)
        else:
            index = torch.tensor(questions, device=hidden.device)
            hidden[index] = prefix.lower(packed.rows.select(index)).to(hidden.dtype)
        if not cache.full:
            items = [(r, keys[r], signatures[r]) for r in missing]
            _store(cache, rows, packed.unpack(hidden), items)
    return hidden


def _served(rows: Rows, hits: list[Tensor | None]) -> Tensor:
    """``[R, T, H]`` with the cached rows filled in (zeros elsewhere)."""
    mask = rows.attention_mask.bool()
    served = [h for h in hits if h is not None]
    hidden = served[0].new_zeros((*mask.shape, served[0].shape[-1]), device=mask.device)
    hit = torch.tensor([h is not None for h in hits], device=mask.device)
    hidden[mask & hit[:, None]] = torch.cat(served).to(mask.device, non_blocking=True)
    return hidden


def _assemble(
    prefix: FrozenPrefix, rows: Rows, hits: list[Tensor | None], missing: list[int]
) -> Tensor:
    hidden = _served(rows, hits)
    if missing:
        index = torch.tensor(missing, device=hidden.device)
        hidden[index] = prefix.lower(rows.select(index)).to(hidden.dtype)
    return hidden


def _store(
    cache: PrefixCache, rows: Rows, hidden: Tensor, items: list[tuple[int, Hashable, Tensor]]
) -> None:
    mask = rows.attention_mask.bool()
    for r, key, signature in items:
        if not cache.put(key, signature, hidden[r][mask[r]]):
            return
