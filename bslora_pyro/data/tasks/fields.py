"""Row field helpers of the task parsers, and the example every family builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import letter_prompt, loglik_pairs
from bslora_pyro.data.tasks.base import Row, RowError


def require(row: Row, key: str) -> Any:
    if not isinstance(row, Mapping) or key not in row:
        raise RowError(f"missing field {key!r}")
    return row[key]


def text_field(row: Row, key: str) -> str:
    value = require(row, key)
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def mc_example(
    uid: str, question: str, texts: list[str], labels: list[str], key: str
) -> MultipleChoiceExample:
    """An ARC/OBQA-style example; ``key`` is matched against the choices' own labels."""
    if key not in labels:
        raise RowError(f"answer key {key!r} is not among the choice labels {labels}")
    if len(set(labels)) != len(labels):
        raise RowError(f"duplicate choice labels {labels}")
    return prompted_example(uid, question, tuple(texts), labels.index(key))


def prompted_example(
    uid: str,
    question: str,
    choices: tuple[str, ...],
    label: int,
    pairs: Callable[[str, tuple[str, ...]], Any] = loglik_pairs,
) -> MultipleChoiceExample:
    """An example with the paper's letter prompt and the ``pairs`` of ``choice_loglik``
    scoring (lm-eval's question/answer pairs by default)."""
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=choices,
        label=label,
        letter_prompt=letter_prompt(question, choices),
        loglik_pairs=pairs(question, choices),
    )
