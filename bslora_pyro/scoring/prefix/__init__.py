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

from bslora_pyro.scoring.prefix.cache import (
    PrefixCache,
    lower_with_cache,
    packed_lower_with_cache,
    prefix_fingerprint,
)
from bslora_pyro.scoring.prefix.frozen import FrozenPrefix, first_adapted_block
from bslora_pyro.scoring.prefix.packing import PACK_GAIN, PackedRows, pack_rows
from bslora_pyro.scoring.prefix.rows import Rows, repeat_rows
from bslora_pyro.scoring.prefix.stacks import BertStack, LlamaStack, Stack, find_stack

__all__ = [
    "PACK_GAIN",
    "BertStack",
    "FrozenPrefix",
    "LlamaStack",
    "PackedRows",
    "PrefixCache",
    "Rows",
    "Stack",
    "find_stack",
    "first_adapted_block",
    "lower_with_cache",
    "pack_rows",
    "packed_lower_with_cache",
    "prefix_fingerprint",
    "repeat_rows",
]
