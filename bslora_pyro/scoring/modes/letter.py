"""``letter`` mode: one prompt per question; the LM head runs at the last real position
only and the columns of the answer letters ``A, B, ...`` are kept."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import tokens
from bslora_pyro.scoring.batch import LETTERS, EncodedBatch, ScoringError
from bslora_pyro.scoring.modes.base import EncodingSettings, ScoringMode
from bslora_pyro.scoring.network import gather_positions, output_head
from bslora_pyro.scoring.prefix import PackedRows


def find_letter_id(tokenizer: Any, letter: str) -> int:
    """The single token id of ``" A"`` (preferred) or ``"A"``."""
    unk = getattr(tokenizer, "unk_token_id", None)
    tried = []
    for text in (f" {letter}", letter):
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        tried.append(f"{text!r} -> {ids}")
        if len(ids) == 1 and (unk is None or ids[0] != unk):
            return int(ids[0])
    raise ScoringError(
        f"answer letter {letter!r} is not a single token for tokenizer "
        f"{tokens.tokenizer_name(tokenizer)!r} ({'; '.join(tried)}): use another scoring mode"
    )


def _fit(scorer: EncodingSettings, ex: MultipleChoiceExample, ids: list[int],
         bos: int | None) -> list[int]:
    """``ids`` of the prompt cut to ``max_length``: inside its passage (``ex.context``,
    keeping the passage's start) when it has one, so that the instruction and the question
    stay; else from the left."""
    if len(ids) <= scorer.max_length:
        return ids
    passage = ex.context
    if passage and ex.letter_prompt.count(passage) == 1:
        before, after = ex.letter_prompt.split(passage)
        parts = [list(scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
                 for text in (before, passage, after)]
        special = ids[:1] if bos is not None and ids and ids[0] == bos else []
        room = scorer.max_length - len(special) - len(parts[0]) - len(parts[2])
        if room > 0:
            return special + parts[0] + parts[1][:room] + parts[2]
    return tokens.truncate_left(ids, scorer.max_length, bos)


class LetterMode(ScoringMode):
    name = "letter"

    def check_example(self, ex: MultipleChoiceExample) -> None:
        if ex.num_choices > len(LETTERS):
            raise ScoringError(f"example {ex.uid!r}: more than {len(LETTERS)} choices")

    def encode(self, scorer: EncodingSettings, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = tokens.common(examples)
        words = {ex.answer_words for ex in examples}
        if len(words) > 1:
            raise ScoringError(f"a batch mixes answer words {sorted(map(str, words))}")
        letter_ids = torch.tensor(scorer.letter_token_ids(num_choices, words.pop()),
                                  dtype=torch.long)
        prompts = [ex.letter_prompt for ex in examples]
        bos = getattr(scorer.tokenizer, "bos_token_id", None)
        seqs = [
            _fit(scorer, ex, list(ids), bos)
            for ex, ids in zip(examples, scorer.tokenizer(prompts)["input_ids"], strict=True)
        ]
        for ex, seq in zip(examples, seqs, strict=True):
            if not seq:
                raise ScoringError(f"example {ex.uid!r}: the letter prompt has no tokens")
        side = scorer.padding_side
        ids, mask, width = tokens.pad(seqs, scorer.pad_id, side)
        last = [tokens.offset(len(s), width, side) + len(s) - 1 for s in seqs]
        return self.token_batch(
            examples,
            (ids, mask),
            labels,
            choice_mask,
            last_positions=torch.tensor(last, dtype=torch.long),
            letter_ids=letter_ids,
        )

    def pick(
        self, batch: EncodedBatch, hidden: Tensor, num_draws: int, packed: PackedRows | None = None
    ) -> Tensor:
        """The last real position of each prompt, ``[D * B, 1, H]``."""
        return gather_positions(hidden, batch.last_positions.unsqueeze(-1), num_draws)

    def head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        vocab_logits = output_head(model)(picked[:, 0])  # [D * B, V]
        return vocab_logits.index_select(-1, batch.letter_ids)
