"""A seeded validation split held out of a training set, for every tuned choice."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def split_validation(
    examples: Sequence, fraction: float, seed: int = 0
) -> tuple[list, list]:
    """``(train, validation)``: ``round(fraction * n)`` examples (at least one) chosen by a
    permutation seeded with ``seed``, the rest for training; both keep the input order."""
    n = len(examples)
    held = max(1, round(fraction * n))
    if n - held < 1:
        raise ValueError(
            f"a validation fraction of {fraction} leaves no training examples of {n}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = set(torch.randperm(n, generator=generator)[:held].tolist())
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    validation = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, validation
