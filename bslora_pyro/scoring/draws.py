"""Draw chunking: split the draws of one forward into chunks that fit a memory budget.

Per-draw state (gates, sampled factors) lives on the gated LoRA layers as draw-major row
groups; :func:`draw_slice` keeps only one chunk's groups for the length of a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from bslora_pyro.adapter.gated_lora import GatedLoraLinear, GateShapeError

AUTO_CHUNK_MB = {"cpu": 64.0, "accelerator": 4096.0}

# per-draw state set on gated LoRA layers from outside: attribute -> dims when per row group
GROUPED_STATE = {"gates": 2, "sampled_A": 3}


@contextmanager
def draw_slice(
    layers: Sequence[GatedLoraLinear], num_draws: int, start: int, count: int
) -> Iterator[None]:
    """Temporarily keep only the row groups (gates, sampled factors) of draws
    ``start .. start + count - 1``."""
    saved = [
        (layer, name, getattr(layer, name, None)) for layer in layers for name in GROUPED_STATE
    ]
    try:
        for layer, name, value in saved:
            if value is None or value.dim() < GROUPED_STATE[name]:
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


def draw_grouped(module: nn.Module, num_draws: int) -> bool:
    """True when ``module`` treats all rows of a draw alike (no hooks; gates and sampled
    factors shared by all rows or one group per draw), so a draw's rows may be regrouped."""
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        for name, dims in GROUPED_STATE.items():
            value = getattr(m, name, None) if isinstance(m, GatedLoraLinear) else None
            if value is not None and value.dim() >= dims and value.shape[0] != num_draws:
                return False
    return True


def draw_bytes(model: Any, rows: int, width: int, blocks: int, head: int, grad: bool) -> int:
    """A rough activation-memory estimate of one draw: a block's transient tensors (times the
    blocks whose activations autograd keeps) plus ``head`` float32 vocabulary rows."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 1024))
    inner = int(getattr(config, "intermediate_size", 4 * hidden))
    heads = int(getattr(config, "num_attention_heads", 16))
    elem = next(model.parameters()).element_size()
    block = rows * width * (6 * hidden + 3 * inner) * elem + rows * heads * width * width * 4
    return block * (max(1, blocks) if grad else 1) + head_bytes(model, head)


def head_bytes(model: Any, head: int) -> int:
    """A draw's head memory: ``head`` float32 vocabulary rows (logits, log-probabilities)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 32000))
    return head * vocab * 8


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, count)`` of consecutive chunks of at most ``size`` draws."""
    for start in range(0, total, size):
        yield start, min(size, total - start)


def fitting_draws(
    budget_mb: float | str | None, num_draws: int, cpu: bool, per_draw: Callable[[], int]
) -> int:
    """How many of ``num_draws`` draws of ``per_draw()`` bytes each fit ``budget_mb``
    (``"auto"``: per device kind, :data:`AUTO_CHUNK_MB`; ``None``: all of them)."""
    if budget_mb == "auto":
        budget_mb = AUTO_CHUNK_MB["cpu" if cpu else "accelerator"]
    if budget_mb is None or num_draws == 1:
        return num_draws
    return max(1, min(num_draws, int(float(budget_mb) * 2**20) // max(1, per_draw())))
