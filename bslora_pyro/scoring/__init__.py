"""Turn multiple-choice examples into choice logits (the logits of one Categorical).

The modes, in :mod:`bslora_pyro.scoring.modes`:

* ``letter``: one prompt per question; the LM head is applied at the last real position only
  and the columns of the answer letters ``A, B, ...`` are kept.
* ``choice_loglik``: one ``(context, continuation)`` row per (question, choice); the logit of a
  choice is the summed log-probability of its continuation tokens (lm-evaluation-harness
  style). The LM head is applied only at the positions that predict continuation tokens.
  ``choice_loglik_mean`` divides that sum by the number of continuation tokens.
* ``encoder``: multiple-choice head models (``BertForMultipleChoice``); each
  ``(question, choice)`` is encoded as a text pair and the model returns ``[B, C]`` logits.

Fast paths (same logits, see ``tests/test_fast_paths.py``): when every adapter sits in blocks
``>= k`` of a supported stack (Llama family, BERT), the blocks below ``k`` run once per batch
without autograd and only the top runs per draw (:mod:`bslora_pyro.scoring.prefix`); under
autograd the block-``k`` states are cached across steps by example uid within
``prefix_cache_mb``. In ``choice_loglik`` mode on Llama stacks the rows of a question are
packed into one (:class:`~bslora_pyro.scoring.prefix.PackedRows`): the context the choices
share runs once per question and draw, each choice's continuation attends to it. Draws are
split into chunks whose estimated activation memory fits ``draw_chunk_mb``
(:mod:`bslora_pyro.scoring.draws`).

Layout: ``batch`` (the encoded batch, errors), ``tokens`` (padding, truncation),
``network`` (decoder body, LM head), ``modes/`` (one module per mode), ``draws`` (draw
chunking), ``prefix/`` (stacks, frozen prefix, packing, cache), ``scorer``
(:class:`ChoiceScorer`).
"""

from __future__ import annotations

from bslora_pyro.scoring.batch import (
    LETTERS,
    EncodedBatch,
    ScoringError,
    choice_probabilities,
    masked_fill_value,
)
from bslora_pyro.scoring.modes import MODES
from bslora_pyro.scoring.network import decoder_body, output_head
from bslora_pyro.scoring.scorer import ChoiceScorer
from bslora_pyro.scoring.tokens import positions_from_mask

__all__ = [
    "LETTERS",
    "MODES",
    "ChoiceScorer",
    "EncodedBatch",
    "ScoringError",
    "choice_probabilities",
    "decoder_body",
    "masked_fill_value",
    "output_head",
    "positions_from_mask",
]
