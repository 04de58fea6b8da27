"""The encoded batch every scoring mode produces, and the logit helpers shared by all."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class ScoringError(ValueError):
    """Examples, tokenizer or model cannot be scored in the requested mode."""


def masked_fill_value(dtype: torch.dtype = torch.float32) -> float:
    """The large negative finite logit given to missing choices."""
    return torch.finfo(dtype).min / 2


def choice_probabilities(logits: Tensor) -> Tensor:
    """Softmax over the choices (the last dimension)."""
    return torch.softmax(logits, dim=-1)


@dataclass
class EncodedBatch:
    """Tensors for one batch of ``B`` questions with up to ``C`` choices.

    ``input_ids``/``attention_mask`` are ``[B, T]`` (letter), ``[B * C, T]`` (choice_loglik,
    row ``question * C + choice``) or ``[B, C, T]`` (encoder). ``last_positions`` ``[B]`` and
    ``letter_ids`` ``[C]`` serve letter mode; ``target_positions``, ``target_ids`` and
    ``target_mask`` ``[B * C, K]`` hold, per row, the positions predicting continuation
    tokens, those tokens and which of the ``K`` slots are real. ``uids`` ``[B]`` name the
    questions (keys of the cross-step prefix cache).
    """

    mode: str
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    choice_mask: Tensor
    position_ids: Tensor | None = None
    token_type_ids: Tensor | None = None
    last_positions: Tensor | None = None
    letter_ids: Tensor | None = None
    target_positions: Tensor | None = None
    target_ids: Tensor | None = None
    target_mask: Tensor | None = None
    uids: tuple[str, ...] | None = None

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_choices(self) -> int:
        return int(self.choice_mask.shape[1])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def _map(self, fn) -> EncodedBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> EncodedBatch:
        """A copy with every tensor on ``device`` (non-blocking only for copies from the CPU)."""
        return self._map(
            lambda t: t.to(device, non_blocking=non_blocking and t.device.type == "cpu")
        )

    def pin_memory(self) -> EncodedBatch:
        """A copy in pinned CPU memory (a no-op copy without CUDA)."""
        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory() if t.device.type == "cpu" else t)
