"""WinoGrande (sizes S and M): a sentence with a blank and two options; lm-eval partial
scoring. Local files may carry their labels in a ``<file stem>-labels.lst`` beside them."""

from __future__ import annotations

from typing import Any

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import winogrande_loglik_pairs
from bslora_pyro.data.tasks.base import Row, RowError, TaskSpec, validation_named
from bslora_pyro.data.tasks.fields import prompted_example, require, text_field

_WINOGRANDE_FORMAT = (
    'JSON Lines: {"qID", "sentence", "option1", "option2", "answer"} plus optional '
    "<split>-labels.lst with one label (1 or 2) per line"
)


def winogrande_label(value: Any) -> int:
    text = str(value).strip()
    if text not in ("1", "2"):
        raise RowError(f"answer must be '1' or '2', got {value!r}")
    return int(text) - 1


def _winogrande_example(row: Row, uid: str, label: int) -> MultipleChoiceExample:
    sentence = text_field(row, "sentence")
    options = (text_field(row, "option1"), text_field(row, "option2"))
    return prompted_example(uid, sentence, options, label, winogrande_loglik_pairs)


def _winogrande_local(row: Row, uid: str) -> MultipleChoiceExample:
    """Rows carry the label in ``answer`` (filled in from ``*-labels.lst`` when absent)."""
    uid = str(row.get("qID", uid)).strip()
    return _winogrande_example(row, uid, winogrande_label(require(row, "answer")))


def _winogrande_hub(row: Row, uid: str) -> MultipleChoiceExample:
    return _winogrande_example(row, uid, winogrande_label(require(row, "answer")))


def winogrande_spec(size: str) -> TaskSpec:
    return TaskSpec(
        name=f"winogrande_{size}",
        splits=("train", "dev"),
        local_files={"train": f"winogrande/train_{size}.jsonl", "dev": "winogrande/dev.jsonl"},
        local_format=_WINOGRANDE_FORMAT,
        hub_path="allenai/winogrande",
        hub_config=f"winogrande_{size}",
        parse_local=_winogrande_local,
        parse_hub=_winogrande_hub,
        **validation_named("dev"),
        labels_files=True,
    )
