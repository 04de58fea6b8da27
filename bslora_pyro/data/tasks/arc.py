"""ARC (Easy, Challenge) and OpenBookQA: lettered choices with an answer key."""

from __future__ import annotations

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.tasks.base import Row, RowError, TaskSpec, validation_named
from bslora_pyro.data.tasks.fields import mc_example, require, text_field

_ARC_FORMAT = (
    'JSON Lines: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}'
)


def _arc_local(row: Row, uid: str) -> MultipleChoiceExample:
    question = require(row, "question")
    raw_choices = require(question, "choices")
    if not isinstance(raw_choices, list):
        raise RowError("field 'question.choices' must be a list")
    texts = [text_field(choice, "text") for choice in raw_choices]
    labels = [str(require(choice, "label")).strip() for choice in raw_choices]
    key = str(require(row, "answerKey")).strip()
    return mc_example(text_field(row, "id"), text_field(question, "stem"), texts, labels, key)


def _hub_choices(row: Row) -> tuple[list[str], list[str]]:
    choices = require(row, "choices")
    texts, labels = list(require(choices, "text")), list(require(choices, "label"))
    if len(texts) != len(labels):
        raise RowError("choices.text and choices.label differ in length")
    return [str(t).strip() for t in texts], [str(label).strip() for label in labels]


def _arc_hub(row: Row, uid: str) -> MultipleChoiceExample:
    texts, labels = _hub_choices(row)
    key = str(require(row, "answerKey")).strip()
    return mc_example(text_field(row, "id"), text_field(row, "question"), texts, labels, key)


def _obqa_hub(row: Row, uid: str) -> MultipleChoiceExample:
    texts, labels = _hub_choices(row)
    key = str(require(row, "answerKey")).strip()
    return mc_example(text_field(row, "id"), text_field(row, "question_stem"), texts, labels, key)


def arc_spec(name: str, folder: str) -> TaskSpec:
    files = {s: f"arc/{folder}/{folder}-{s.capitalize()}.jsonl" for s in ("train", "dev", "test")}
    return TaskSpec(
        name=name,
        splits=("train", "dev", "test"),
        local_files=files,
        local_format=_ARC_FORMAT,
        hub_path="allenai/ai2_arc",
        hub_config=folder,
        parse_local=_arc_local,
        parse_hub=_arc_hub,
        **validation_named("dev"),
        note="the benchmark protocol evaluates ARC on dev",
    )


OPENBOOKQA = TaskSpec(
    name="openbookqa",
    splits=("train", "dev", "test"),
    local_files={s: f"openbookqa/Main/{s}.jsonl" for s in ("train", "dev", "test")},
    local_format=_ARC_FORMAT,
    hub_path="allenai/openbookqa",
    hub_config="main",
    parse_local=_arc_local,
    parse_hub=_obqa_hub,
    **validation_named("dev"),
    note="the shared data has no OpenBookQA dev file; the protocol evaluates on test",
)
