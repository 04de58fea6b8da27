"""What a scoring mode provides to :class:`~bslora_pyro.scoring.ChoiceScorer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import tokens
from bslora_pyro.scoring.batch import EncodedBatch, ScoringError
from bslora_pyro.scoring.network import decoder_body, hidden_states
from bslora_pyro.scoring.prefix import FrozenPrefix, LlamaStack, PackedRows


class EncodingSettings(Protocol):
    """What an encoder reads from the scorer (:class:`~bslora_pyro.scoring.ChoiceScorer`)."""

    tokenizer: Any
    max_length: int
    pad_id: int

    @property
    def padding_side(self) -> str: ...

    def letter_token_ids(self, num_choices: int, words: tuple[str, ...] | None = None
                         ) -> list[int]: ...


class ScoringMode:
    """One way of turning questions into choice scores: how examples are encoded, which
    hidden states the head reads and how it turns them into per-row scores. Stateless; the
    scorer passes itself (tokenizer, ``max_length``, padding) where a mode needs it."""

    name: str
    #: the choices of a question are rows with a common context, which the scorer may pack
    shares_context: bool = False

    def check(self, examples: Sequence[MultipleChoiceExample]) -> None:
        """Refuse examples this mode cannot score (a one-line :class:`ScoringError`)."""
        if len(examples) == 0:
            raise ScoringError("no examples to encode")
        for ex in examples:
            if ex.num_choices < 1:
                raise ScoringError(f"example {ex.uid!r} has no choices")
            if ex.label is not None and not 0 <= ex.label < ex.num_choices:  # None: unlabelled
                raise ScoringError(f"example {ex.uid!r}: label {ex.label} outside its choices")
            self.check_example(ex)

    def check_example(self, ex: MultipleChoiceExample) -> None:
        """Mode-specific checks of one example (none by default)."""

    def encode(self, scorer: EncodingSettings, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        raise NotImplementedError

    def token_batch(
        self,
        examples: Sequence[MultipleChoiceExample],
        rows: tuple[Tensor, Tensor],
        labels: Tensor,
        choice_mask: Tensor,
        **fields: Tensor,
    ) -> EncodedBatch:
        """The batch of the padded token ``rows`` (ids, mask), positions counted from the
        mask; ``fields`` are the mode's own tensors."""
        ids, mask = rows
        return EncodedBatch(
            mode=self.name,
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            choice_mask=choice_mask,
            position_ids=tokens.positions_from_mask(mask),
            uids=tuple(ex.uid for ex in examples),
            **fields,
        )

    def full_scores(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        """Per-row scores of ``num_draws`` draws from the plain full forward."""
        hidden = hidden_states(model, batch, num_draws)
        return self.head(model, batch, self.pick(batch, hidden, num_draws), num_draws)

    def pick(
        self, batch: EncodedBatch, hidden: Tensor, num_draws: int, packed: PackedRows | None = None
    ) -> Tensor:
        """The final hidden states the head reads, ``[D * rows, N, H]``."""
        raise NotImplementedError

    def head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        """Per-row scores (draw-major) from the picked states."""
        raise NotImplementedError

    def prefix_fits(self, model: Any, prefix: FrozenPrefix) -> bool:
        """True when ``prefix`` feeds this mode's head: a Llama stack of the decoder body."""
        return isinstance(prefix.stack, LlamaStack) and prefix.stack.body is decoder_body(model)
