"""``encoder`` mode: multiple-choice head models (``BertForMultipleChoice``); each
``(question, choice)`` is encoded as a text pair and the model returns ``[B, C]`` logits."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import tokens
from bslora_pyro.scoring.batch import EncodedBatch
from bslora_pyro.scoring.modes.base import EncodingSettings, ScoringMode
from bslora_pyro.scoring.network import repeat
from bslora_pyro.scoring.prefix import BertStack, FrozenPrefix, PackedRows


class EncoderMode(ScoringMode):
    name = "encoder"

    def encode(self, scorer: EncodingSettings, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = tokens.common(examples)
        firsts, seconds = [], []
        for ex in examples:
            question = ex.question if ex.context is None else f"{ex.context} {ex.question}"
            padded = list(ex.choices) + [""] * (num_choices - ex.num_choices)
            firsts.extend([question] * num_choices)
            seconds.extend(padded)
        with tokens.truncation_side(scorer.tokenizer, "left"):
            enc = scorer.tokenizer(
                firsts,
                seconds,
                truncation="only_first",
                max_length=scorer.max_length,
                padding=True,
                return_tensors="pt",
            )
        shape = (len(examples), num_choices, -1)
        token_types = enc.get("token_type_ids")
        return EncodedBatch(
            mode=self.name,
            input_ids=enc["input_ids"].view(shape),
            attention_mask=enc["attention_mask"].view(shape),
            labels=labels,
            choice_mask=choice_mask,
            token_type_ids=None if token_types is None else token_types.view(shape),
            uids=tuple(ex.uid for ex in examples),
        )

    def full_scores(self, model: Any, batch: EncodedBatch, num_draws: int) -> Tensor:
        """The model's own multiple-choice logits ``[D * B, C]``."""
        kwargs = {
            "input_ids": repeat(batch.input_ids, num_draws),
            "attention_mask": repeat(batch.attention_mask, num_draws),
        }
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = repeat(batch.token_type_ids, num_draws)
        out = model(**kwargs)
        return out.logits if hasattr(out, "logits") else out[0]

    def pick(
        self, batch: EncodedBatch, hidden: Tensor, num_draws: int, packed: PackedRows | None = None
    ) -> Tensor:
        """The first-token states ``[D * R, 1, H]``."""
        return hidden[:, :1]

    def head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        """The multiple-choice head (pooler, dropout, classifier) on the first-token states
        ``[D * B * C, 1, H]``; returns ``[D * B, C]``."""
        pooled = model.base_model.pooler(picked)
        return model.classifier(model.dropout(pooled)).view(-1, batch.num_choices)

    def prefix_fits(self, model: Any, prefix: FrozenPrefix) -> bool:
        """A BERT stack of the model's body, with a pooler and the classifier head."""
        heads = ("dropout", "classifier")
        ok = isinstance(prefix.stack, BertStack) and all(hasattr(model, h) for h in heads)
        body = getattr(model, "base_model", None)
        return ok and body is prefix.stack.body and getattr(body, "pooler", None) is not None
