"""The one record type every task loader produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MultipleChoiceExample:
    """A question with a fixed set of answer choices and the index of the right one.

    ``label`` is ``None`` for an unlabelled set (an out-of-distribution set that is only
    scored for OOD detection, never for accuracy); see :attr:`labelled`. ``context`` carries
    a passage (BoolQ). ``loglik_pairs`` holds, per choice, the
    ``(context, continuation)`` strings scored in ``choice_loglik`` mode; ``letter_prompt``
    is the paper's prompt scored in ``letter`` mode, at the tokens of ``answer_words``
    (e.g. BoolQ's ``True``/``False``, which its prompt asks for) or, when ``None``, of the
    letters ``A, B, ...``. A letter prompt too long for the scorer is cut inside its
    ``context`` passage when it contains one, so that the question stays.
    """

    uid: str
    question: str
    choices: tuple[str, ...]
    label: int | None
    letter_prompt: str
    loglik_pairs: tuple[tuple[str, str], ...]
    context: str | None = None
    answer_words: tuple[str, ...] | None = None

    @property
    def num_choices(self) -> int:
        return len(self.choices)

    @property
    def labelled(self) -> bool:
        """Whether the example has a right answer (``label`` is not ``None``)."""
        return self.label is not None
