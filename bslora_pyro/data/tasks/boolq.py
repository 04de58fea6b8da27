"""BoolQ: a yes/no question about a passage (the answer as true/false or a 0/1 label)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import BOOLQ_CHOICES, boolq_letter_prompt, boolq_loglik_pairs
from bslora_pyro.data.tasks.base import DATA_DIR_ENV, Row, RowError, TaskSpec
from bslora_pyro.data.tasks.fields import require, text_field


def _boolq_label(row: Row) -> int:
    """Index into ``BOOLQ_CHOICES``: 0 for True, 1 for False."""
    if isinstance(row, Mapping) and "answer" not in row and "label" in row:
        value: Any = row["label"]  # SuperGLUE style: 1 = True
        if value in (0, 1) and not isinstance(value, float):
            return 0 if value else 1
        raise RowError(f"field 'label' must be 0 or 1, got {value!r}")
    value = require(row, "answer")
    if isinstance(value, bool):
        return 0 if value else 1
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return 0 if value.strip().lower() == "true" else 1
    raise RowError(f"field 'answer' must be true or false, got {value!r}")


def _boolq(row: Row, uid: str) -> MultipleChoiceExample:
    question, passage = text_field(row, "question"), text_field(row, "passage")
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=BOOLQ_CHOICES,
        label=_boolq_label(row),
        letter_prompt=boolq_letter_prompt(question, passage),
        loglik_pairs=boolq_loglik_pairs(question, passage),
        context=passage,
        answer_words=BOOLQ_CHOICES,  # the prompt asks for True or False, not a letter
    )


BOOLQ = TaskSpec(
    name="boolq",
    splits=("train", "validation"),
    local_files={"train": "boolq/train.jsonl", "validation": "boolq/dev.jsonl"},
    local_format='JSON Lines: {"question", "passage", "answer": true|false}',
    hub_path="google/boolq",
    hub_config=None,
    parse_local=_boolq,
    parse_hub=_boolq,
    aliases={"dev": "validation"},
    note=(
        "BoolQ is not in the project's shared data: add the original files there or "
        f"leave data_dir and ${DATA_DIR_ENV} unset to load google/boolq from the hub"
    ),
)
