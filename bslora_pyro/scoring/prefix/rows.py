"""The token rows entering the network, before draw replication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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
