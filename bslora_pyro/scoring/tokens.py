"""Tokenizer-side helpers of the encoders: padding, truncation, positions, choice masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from bslora_pyro.data.example import MultipleChoiceExample

#: the label tensor's entry for an unlabelled example (``label`` None)
UNLABELLED = -1


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its end-of-sequence id when it has none, else 0)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def truncate_left(ids: list[int], max_length: int, keep_first: int | None = None) -> list[int]:
    """Keep the last ``max_length`` ids (and the first id when it equals ``keep_first``)."""
    if len(ids) <= max_length:
        return ids
    if keep_first is not None and ids and ids[0] == keep_first and max_length > 1:
        return [ids[0], *ids[len(ids) - max_length + 1 :]]
    return ids[len(ids) - max_length :]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[Tensor, Tensor, int]:
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


def offset(length: int, width: int, side: str) -> int:
    """Column of a sequence's first token after padding."""
    return width - length if side == "left" else 0


def choice_mask(examples: Sequence[MultipleChoiceExample], num_choices: int) -> Tensor:
    counts = torch.tensor([ex.num_choices for ex in examples])
    return torch.arange(num_choices).unsqueeze(0) < counts.unsqueeze(1)


def common(examples: list[MultipleChoiceExample]) -> tuple[int, Tensor, Tensor]:
    """The batch's number of choices ``C``, its labels ``[B]`` and choice mask ``[B, C]``.

    An unlabelled example (``label`` None, an OOD set) gets the label ``-1``: a tensor needs
    an integer, and -1 is no choice index, so any accuracy against it is visibly wrong."""
    num_choices = max(ex.num_choices for ex in examples)
    labels = torch.tensor([UNLABELLED if ex.label is None else ex.label for ex in examples],
                          dtype=torch.long)
    return num_choices, labels, choice_mask(examples, num_choices)


@contextmanager
def truncation_side(tokenizer: Any, side: str) -> Iterator[None]:
    """Temporarily set the tokenizer's truncation side."""
    previous = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = previous
