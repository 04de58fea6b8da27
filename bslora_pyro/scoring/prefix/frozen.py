"""The frozen prefix: embeddings and blocks below the lowest adapter, run once per batch.

When every gated LoRA layer (and every trainable parameter) sits in blocks ``>= k``, the
hidden states entering block ``k`` do not depend on gates or factors. :class:`FrozenPrefix`
computes them once per batch under ``torch.no_grad()`` (:meth:`FrozenPrefix.lower`) and runs
blocks ``>= k`` plus the final norm on hidden states replicated draw-major
(:meth:`FrozenPrefix.upper`); the last block's feed-forward part runs only at the positions
the head reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.adapter.gated_lora import GatedLoraLinear
from bslora_pyro.scoring.prefix.rows import Rows, repeat_rows
from bslora_pyro.scoring.prefix.stacks import Selector, Stack, find_stack


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
