"""Prompt builders for the two scoring modes.

``letter`` mode uses the paper's prompts (BLoB benchmark protocol): the model reads one prompt
and the answer-letter tokens are scored at the last position. ``choice_loglik`` mode follows
lm-evaluation-harness: each choice is a ``(context, continuation)`` pair whose continuation
log-likelihood is scored.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

LETTERS: str = string.ascii_uppercase
BOOLQ_CHOICES: tuple[str, str] = ("True", "False")
BOOLQ_CONTINUATIONS: tuple[str, str] = (" yes", " no")
#: sentiment choices; label 1 is positive, as on the hub's rotten_tomatoes
SENTIMENT_CHOICES: tuple[str, str] = ("negative", "positive")
#: the ``choice_loglik`` context of a sentiment snippet (chosen on the dev split, docs/tasks.md)
SENTIMENT_CONTEXT = "Movie review: {text}\nSentiment:"
SENTIMENT_CONTINUATIONS: tuple[str, str] = (" negative", " positive")
_SENTIMENT_QUESTION = "Is the review positive or negative?"

_MC_INSTRUCTION = "Select one of the choices that answers the following question:"
_BOOLQ_INSTRUCTION = "Answer the question with only True or False:"


def choice_letters(num_choices: int) -> tuple[str, ...]:
    """The answer letters ``A, B, C, ...`` for ``num_choices`` choices (2 to 26)."""
    if not 2 <= num_choices <= len(LETTERS):
        raise ValueError(f"need between 2 and {len(LETTERS)} choices, got {num_choices}")
    return tuple(LETTERS[:num_choices])


def letter_prompt(question: str, choices: Sequence[str]) -> str:
    """The paper's multiple-choice prompt (ARC, OpenBookQA, MMLU, WinoGrande).

    ``Select one of the choices that answers the following question: {question}
    Choices: A. {c1}. B. {c2}. ... Answer:`` (one line), for any number of choices.
    """
    letters = choice_letters(len(choices))
    listed = " ".join(f"{letter}. {text}." for letter, text in zip(letters, choices, strict=True))
    return f"{_MC_INSTRUCTION} {question} Choices: {listed} Answer:"


def boolq_letter_prompt(question: str, passage: str) -> str:
    """The paper's BoolQ prompt; the choices are :data:`BOOLQ_CHOICES`."""
    return f"{_BOOLQ_INSTRUCTION} {question} Context: {passage}."


def loglik_pairs(question: str, choices: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """lm-eval style pairs ``("Question: {q}\\nAnswer:", " {choice}")``, one per choice."""
    choice_letters(len(choices))
    context = f"Question: {question}\nAnswer:"
    return tuple((context, f" {choice}") for choice in choices)


def winogrande_loglik_pairs(sentence: str, options: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """lm-eval partial scoring for WinoGrande.

    Per option the context is the sentence up to the blank ``_`` with the option filled in,
    and the continuation is the rest of the sentence after the blank (leading space kept), so
    only the shared continuation is scored.
    """
    choice_letters(len(options))
    if sentence.count("_") != 1:
        raise ValueError(f"sentence must contain exactly one '_' blank: {sentence!r}")
    head, tail = sentence.split("_")
    return tuple((head + option, tail) for option in options)


def boolq_loglik_pairs(question: str, passage: str) -> tuple[tuple[str, str], ...]:
    """lm-eval BoolQ pairs: ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` with `` yes``/`` no``.

    The order matches :data:`BOOLQ_CHOICES` (True, False).
    """
    context = f"{passage}\nQuestion: {question}?\nAnswer:"
    return tuple((context, continuation) for continuation in BOOLQ_CONTINUATIONS)


def sentiment_loglik_pairs(
    text: str,
    context: str = SENTIMENT_CONTEXT,
    continuations: Sequence[str] = SENTIMENT_CONTINUATIONS,
) -> tuple[tuple[str, str], ...]:
    """``choice_loglik`` pairs of a snippet: ``context`` with ``{text}`` filled in, and one
    continuation per choice of :data:`SENTIMENT_CHOICES`."""
    filled = context.format(text=text)
    return tuple((filled, continuation) for continuation in continuations)


def sentiment_letter_prompt(text: str) -> str:
    """The paper-style multiple-choice prompt of a snippet; the text comes before the
    question, so a prompt truncated on the left loses the start of a long text, not the
    question."""
    return letter_prompt(f"Movie review: {text} {_SENTIMENT_QUESTION}", SENTIMENT_CHOICES)
