"""Block-by-block views of the supported architectures (Llama-family decoders, BERT).

Llama stacks build the causal + padding mask with transformers' own mask utilities (or a
block mask for packed rows), BERT stacks a bidirectional padding mask; anything else gives
``None`` from :func:`find_stack`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.scoring.prefix.rows import Rows

LLAMA_TYPES = frozenset({"llama"})
BERT_TYPES = frozenset({"bert"})
MASK_IMPLEMENTATIONS = frozenset({"eager", "sdpa"})


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
