"""The parts of a backbone the scorer calls: decoder body, LM head, gated layers."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.adapter.gated_lora import GatedLoraLinear
from bslora_pyro.scoring.batch import EncodedBatch, ScoringError


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


def accepts(module: Any, name: str) -> bool:
    """True when ``module.forward`` takes a keyword ``name``."""
    params = inspect.signature(module.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def model_device(model: Any) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return None


def gated_layers(model: nn.Module) -> list[GatedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, GatedLoraLinear)]


def repeat(t: Tensor | None, num_draws: int) -> Tensor | None:
    """Draw-major replication along the leading dimension."""
    if t is None or num_draws == 1:
        return t
    return t.repeat(num_draws, *([1] * (t.dim() - 1)))


def gather_positions(hidden: Tensor, positions: Tensor, num_draws: int) -> Tensor:
    """The states ``[D * B, N, H]`` at the columns ``positions`` ``[B, N]`` of every draw."""
    index = repeat(positions, num_draws).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


def hidden_states(model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
    """Final hidden states ``[num_draws * rows, T, H]`` of the decoder body."""
    body = decoder_body(model)
    kwargs: dict[str, Any] = {
        "input_ids": repeat(batch.input_ids, num_draws),
        "attention_mask": repeat(batch.attention_mask, num_draws),
    }
    if batch.position_ids is not None and accepts(body, "position_ids"):
        kwargs["position_ids"] = repeat(batch.position_ids, num_draws)
    if accepts(body, "use_cache"):
        kwargs["use_cache"] = False
    out = body(**kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
