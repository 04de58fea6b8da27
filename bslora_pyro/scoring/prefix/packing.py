"""Question packing: the ``C`` choice rows of a question as one row with a block mask.

The tokens the rows share run once, each choice's own tokens attend to them; every real
token keeps the hidden state it has in its own row (``choice_loglik`` scoring, Llama stacks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bslora_pyro.scoring.prefix.rows import Rows

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
