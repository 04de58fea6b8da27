"""Task registry and loader for the BLoB calibration benchmark.

Data come from a local directory laid out like the project's shared data (the ``data_dir``
argument, else the ``BSLORA_DATA_DIR`` environment variable) or, when neither is given, from
the Hugging Face hub through ``datasets.load_dataset``. Every loader returns a list of
:class:`MultipleChoiceExample`; every problem with the data raises :class:`DataError` that
names the file (and line) at fault. Outer whitespace of text fields is stripped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .example import MultipleChoiceExample
from .prompts import (
    BOOLQ_CHOICES,
    boolq_letter_prompt,
    boolq_loglik_pairs,
    letter_prompt,
    loglik_pairs,
    winogrande_loglik_pairs,
)

DATA_DIR_ENV = "BSLORA_DATA_DIR"

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

MMLU_PREFIX = "mmlu:"
_MMLU_SPLITS = ("dev", "val", "test")


class DataError(ValueError):
    """A task, split, file or row that cannot be loaded."""


class _RowError(ValueError):
    """A problem with one row; the caller adds the file and line."""


Row = Mapping[str, Any]
RowParser = Callable[[Row, str], MultipleChoiceExample]


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives locally and on the hub, and how to turn its rows into examples.

    ``local_files`` maps each split to a path relative to the data directory; ``hub_splits``
    maps our split names to hub split names (identity when absent); ``aliases`` maps accepted
    alternative split names to ours.
    """

    name: str
    splits: tuple[str, ...]
    local_files: Mapping[str, str]
    local_format: str
    hub_path: str
    hub_config: str | None
    parse_local: RowParser
    parse_hub: RowParser
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    labels_files: bool = False  # WinoGrande: optional ``<file stem>-labels.lst`` beside the data

    def layout(self) -> str:
        """One-line description of the expected local files of this task."""
        files = ", ".join(f"{split}: {path}" for split, path in self.local_files.items())
        text = f"expected layout for {self.name} under the data directory: {files}"
        text = f"{text} ({self.local_format})"
        return f"{text}; {self.note}" if self.note else text


# --------------------------------------------------------------------------- field helpers


def _get(row: Row, key: str) -> Any:
    if not isinstance(row, Mapping) or key not in row:
        raise _RowError(f"missing field {key!r}")
    return row[key]


def _text(row: Row, key: str) -> str:
    value = _get(row, key)
    if not isinstance(value, str):
        raise _RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _mc_example(
    uid: str, question: str, texts: list[str], labels: list[str], key: str
) -> MultipleChoiceExample:
    """An ARC/OBQA-style example; ``key`` is matched against the choices' own labels."""
    if key not in labels:
        raise _RowError(f"answer key {key!r} is not among the choice labels {labels}")
    if len(set(labels)) != len(labels):
        raise _RowError(f"duplicate choice labels {labels}")
    choices = tuple(texts)
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=choices,
        label=labels.index(key),
        letter_prompt=letter_prompt(question, choices),
        loglik_pairs=loglik_pairs(question, choices),
    )


# --------------------------------------------------------------------------- ARC / OBQA


def _arc_local(row: Row, uid: str) -> MultipleChoiceExample:
    question = _get(row, "question")
    raw_choices = _get(question, "choices")
    if not isinstance(raw_choices, list):
        raise _RowError("field 'question.choices' must be a list")
    texts = [_text(choice, "text") for choice in raw_choices]
    labels = [str(_get(choice, "label")).strip() for choice in raw_choices]
    key = str(_get(row, "answerKey")).strip()
    return _mc_example(_text(row, "id"), _text(question, "stem"), texts, labels, key)


def _hub_choices(row: Row) -> tuple[list[str], list[str]]:
    choices = _get(row, "choices")
    texts, labels = list(_get(choices, "text")), list(_get(choices, "label"))
    if len(texts) != len(labels):
        raise _RowError("choices.text and choices.label differ in length")
    return [str(t).strip() for t in texts], [str(label).strip() for label in labels]


def _arc_hub(row: Row, uid: str) -> MultipleChoiceExample:
    texts, labels = _hub_choices(row)
    key = str(_get(row, "answerKey")).strip()
    return _mc_example(_text(row, "id"), _text(row, "question"), texts, labels, key)


def _obqa_hub(row: Row, uid: str) -> MultipleChoiceExample:
    texts, labels = _hub_choices(row)
    key = str(_get(row, "answerKey")).strip()
    return _mc_example(_text(row, "id"), _text(row, "question_stem"), texts, labels, key)


# --------------------------------------------------------------------------- WinoGrande


def _winogrande_label(value: Any) -> int:
    text = str(value).strip()
    if text not in ("1", "2"):
        raise _RowError(f"answer must be '1' or '2', got {value!r}")
    return int(text) - 1


def _winogrande_example(row: Row, uid: str, label: int) -> MultipleChoiceExample:
    sentence = _text(row, "sentence")
    options = (_text(row, "option1"), _text(row, "option2"))
    return MultipleChoiceExample(
        uid=uid,
        question=sentence,
        choices=options,
        label=label,
        letter_prompt=letter_prompt(sentence, options),
        loglik_pairs=winogrande_loglik_pairs(sentence, options),
    )


def _winogrande_local(row: Row, uid: str) -> MultipleChoiceExample:
    """Rows carry the label in ``answer`` (filled in from ``*-labels.lst`` when absent)."""
    uid = str(row.get("qID", uid)).strip()
    return _winogrande_example(row, uid, _winogrande_label(_get(row, "answer")))


def _winogrande_hub(row: Row, uid: str) -> MultipleChoiceExample:
    return _winogrande_example(row, uid, _winogrande_label(_get(row, "answer")))


# --------------------------------------------------------------------------- BoolQ


def _boolq_label(row: Row) -> int:
    """Index into ``BOOLQ_CHOICES``: 0 for True, 1 for False."""
    if isinstance(row, Mapping) and "answer" not in row and "label" in row:
        value: Any = row["label"]  # SuperGLUE style: 1 = True
        if value in (0, 1) and not isinstance(value, float):
            return 0 if value else 1
        raise _RowError(f"field 'label' must be 0 or 1, got {value!r}")
    value = _get(row, "answer")
    if isinstance(value, bool):
        return 0 if value else 1
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return 0 if value.strip().lower() == "true" else 1
    raise _RowError(f"field 'answer' must be true or false, got {value!r}")


def _boolq(row: Row, uid: str) -> MultipleChoiceExample:
    question, passage = _text(row, "question"), _text(row, "passage")
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=BOOLQ_CHOICES,
        label=_boolq_label(row),
        letter_prompt=boolq_letter_prompt(question, passage),
        loglik_pairs=boolq_loglik_pairs(question, passage),
        context=passage,
    )


# --------------------------------------------------------------------------- MMLU


def _mmlu_example(
    uid: str, question: str, choices: tuple[str, ...], label: int
) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        uid=uid,
        question=question,
        choices=choices,
        label=label,
        letter_prompt=letter_prompt(question, choices),
        loglik_pairs=loglik_pairs(question, choices),
    )


def _mmlu_local(row: Row, uid: str) -> MultipleChoiceExample:
    """``row`` holds the six CSV cells under key ``"cells"``."""
    cells = row["cells"]
    if len(cells) != 6:
        raise _RowError(f"expected 6 columns (question,A,B,C,D,answer), got {len(cells)}")
    answer = cells[5].strip()
    if answer not in ("A", "B", "C", "D"):
        raise _RowError(f"answer must be one of A, B, C, D, got {answer!r}")
    choices = tuple(cell.strip() for cell in cells[1:5])
    return _mmlu_example(uid, cells[0].strip(), choices, "ABCD".index(answer))


def _mmlu_hub(row: Row, uid: str) -> MultipleChoiceExample:
    choices = tuple(str(c).strip() for c in _get(row, "choices"))
    answer = _get(row, "answer")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise _RowError(f"answer {answer!r} is not the index of one of {len(choices)} choices")
    return _mmlu_example(uid, _text(row, "question"), choices, answer)


# --------------------------------------------------------------------------- registry

_ARC_FORMAT = (
    'JSON Lines: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}'
)
_WINOGRANDE_FORMAT = (
    'JSON Lines: {"qID", "sentence", "option1", "option2", "answer"} plus optional '
    "<split>-labels.lst with one label (1 or 2) per line"
)


def _arc_spec(name: str, folder: str) -> TaskSpec:
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
        hub_splits={"dev": "validation"},
        aliases={"validation": "dev"},
        note="the benchmark protocol evaluates ARC on dev",
    )


def _winogrande_spec(size: str) -> TaskSpec:
    return TaskSpec(
        name=f"winogrande_{size}",
        splits=("train", "dev"),
        local_files={"train": f"winogrande/train_{size}.jsonl", "dev": "winogrande/dev.jsonl"},
        local_format=_WINOGRANDE_FORMAT,
        hub_path="allenai/winogrande",
        hub_config=f"winogrande_{size}",
        parse_local=_winogrande_local,
        parse_hub=_winogrande_hub,
        hub_splits={"dev": "validation"},
        aliases={"validation": "dev"},
        labels_files=True,
    )


_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _arc_spec("arc_challenge", "ARC-Challenge"),
        _arc_spec("arc_easy", "ARC-Easy"),
        TaskSpec(
            name="openbookqa",
            splits=("train", "dev", "test"),
            local_files={s: f"openbookqa/Main/{s}.jsonl" for s in ("train", "dev", "test")},
            local_format=_ARC_FORMAT,
            hub_path="allenai/openbookqa",
            hub_config="main",
            parse_local=_arc_local,
            parse_hub=_obqa_hub,
            hub_splits={"dev": "validation"},
            aliases={"validation": "dev"},
            note="the shared data has no OpenBookQA dev file; the protocol evaluates on test",
        ),
        _winogrande_spec("s"),
        _winogrande_spec("m"),
        TaskSpec(
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
        ),
    )
}

TASK_SPLITS: dict[str, tuple[str, ...]] = {
    **{name: spec.splits for name, spec in _TASKS.items()},
    f"{MMLU_PREFIX}<subject>": _MMLU_SPLITS,
}


def _mmlu_spec(subject: str) -> TaskSpec:
    return TaskSpec(
        name=f"{MMLU_PREFIX}{subject}",
        splits=_MMLU_SPLITS,
        local_files={s: f"mmlu/{s}/{subject}_{s}.csv" for s in _MMLU_SPLITS},
        local_format="CSV without header: question,A,B,C,D,answer (answer in A-D)",
        hub_path="cais/mmlu",
        hub_config=subject,
        parse_local=_mmlu_local,
        parse_hub=_mmlu_hub,
        hub_splits={"val": "validation"},
        aliases={"validation": "val"},
    )


def available_tasks() -> list[str]:
    """All task names: the fixed tasks, then ``mmlu:<subject>`` for every MMLU subject."""
    return sorted(_TASKS) + [f"{MMLU_PREFIX}{s}" for s in MMLU_SUBJECTS]


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; :class:`DataError` for an unknown task."""
    if name in _TASKS:
        return _TASKS[name]
    if name.startswith(MMLU_PREFIX) and name[len(MMLU_PREFIX) :] in MMLU_SUBJECTS:
        return _mmlu_spec(name[len(MMLU_PREFIX) :])
    known = ", ".join(sorted(_TASKS))
    raise DataError(
        f"unknown task {name!r}; known tasks: {known}, and {MMLU_PREFIX}<subject> for the "
        f"{len(MMLU_SUBJECTS)} MMLU subjects (e.g. {MMLU_PREFIX}college_physics)"
    )


def _canonical_split(spec: TaskSpec, split: str) -> str:
    split = spec.aliases.get(split, split)
    if split not in spec.splits:
        raise DataError(
            f"task {spec.name!r} has no split {split!r}; its splits are {', '.join(spec.splits)}"
        )
    return split


def _resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir``, else ``$BSLORA_DATA_DIR``, else None (meaning the Hugging Face hub)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist or is not a directory")
    return path


# --------------------------------------------------------------------------- local reading


def _open_text(path: Path, spec: TaskSpec) -> TextIO:
    if not path.is_file():
        raise DataError(f"missing file {path}; {spec.layout()}")
    return path.open(encoding="utf-8", newline="")


def _nonblank_lines(path: Path, spec: TaskSpec) -> list[tuple[int, str]]:
    """Stripped non-blank lines of a text file with their 1-based line numbers."""
    with _open_text(path, spec) as handle:
        lines = handle.read().split("\n")
    return [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]


def _parse_json_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        kind = type(row).__name__
        raise DataError(f"{path}, line {lineno}: expected a JSON object, got {kind}")
    return row


def _convert(parse: RowParser, row: Row, uid: str, where: str) -> MultipleChoiceExample:
    try:
        return parse(row, uid)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None


def _read_labels(path: Path, n_rows: int, data_path: Path, spec: TaskSpec) -> list[tuple[int, str]]:
    """WinoGrande ``*-labels.lst``: one label per non-blank line, as many as data rows."""
    lines = _nonblank_lines(path, spec)
    if len(lines) != n_rows:
        raise DataError(
            f"labels file {path} has {len(lines)} labels but {data_path} has {n_rows} rows"
        )
    return lines


def _check_label(
    example: MultipleChoiceExample, label_text: str, where: str
) -> MultipleChoiceExample:
    """Check that the labels-file label is valid and agrees with the row's label."""
    try:
        label = _winogrande_label(label_text)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    if label != example.label:
        raise DataError(f"{where}: label {label_text} disagrees with the row's answer field")
    return example


def _load_jsonl(
    spec: TaskSpec, split: str, path: Path, limit: int | None
) -> list[MultipleChoiceExample]:
    lines = _nonblank_lines(path, spec)
    if not lines:
        raise DataError(f"{path} is empty: task {spec.name!r} split {split!r} has no rows")
    labels_path = path.with_name(f"{path.stem}-labels.lst")
    labels = None
    if spec.labels_files and labels_path.is_file():
        labels = _read_labels(labels_path, len(lines), path, spec)
    examples = []
    for index, (lineno, line) in enumerate(lines[:limit]):
        row = _parse_json_line(path, lineno, line)
        if labels is not None and "answer" not in row:
            row = {**row, "answer": labels[index][1]}
        uid = f"{spec.name}/{split}/{index}"
        example = _convert(spec.parse_local, row, uid, f"{path}, line {lineno}")
        if labels is not None:
            label_lineno, label_text = labels[index]
            where = f"{labels_path}, line {label_lineno} (row {path}, line {lineno})"
            example = _check_label(example, label_text, where)
        examples.append(example)
    return examples


def _load_csv(
    spec: TaskSpec, split: str, path: Path, limit: int | None
) -> list[MultipleChoiceExample]:
    with _open_text(path, spec) as handle:
        reader = csv.reader(handle)
        rows, start = [], 1
        for cells in reader:
            row_start, start = start, reader.line_num + 1  # a quoted cell may span lines
            if not cells:
                continue  # blank line
            if limit is not None and len(rows) >= limit:
                break
            rows.append((row_start, cells))
        empty = not rows and not any(cells for cells in reader)
    if empty:
        raise DataError(f"{path} is empty: task {spec.name!r} split {split!r} has no rows")
    parse = spec.parse_local
    return [
        _convert(parse, {"cells": cells}, f"{spec.name}/{split}/{i}", f"{path}, line {n}")
        for i, (n, cells) in enumerate(rows)
    ]


def _load_local(
    spec: TaskSpec, split: str, data_dir: Path, limit: int | None
) -> list[MultipleChoiceExample]:
    path = data_dir / spec.local_files[split]
    if path.suffix == ".csv":
        return _load_csv(spec, split, path, limit)
    return _load_jsonl(spec, split, path, limit)


# --------------------------------------------------------------------------- hub


def _hub_name(spec: TaskSpec) -> str:
    return f"{spec.hub_path} ({spec.hub_config})" if spec.hub_config else spec.hub_path


def _hub_rows(spec: TaskSpec, hub_split: str, limit: int | None) -> Iterable[Row]:
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            f"no data directory given (argument or ${DATA_DIR_ENV}) and the `datasets` package "
            f"is not installed to fetch {spec.hub_path} from the Hugging Face hub"
        ) from err
    try:
        dataset = datasets.load_dataset(spec.hub_path, spec.hub_config, split=hub_split)
    except Exception as err:  # network, missing config, cache problems
        raise DataError(
            f"could not load {_hub_name(spec)} split {hub_split!r} from the Hugging Face hub: "
            f"{err}; set ${DATA_DIR_ENV} to a local data directory instead"
        ) from err
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def _load_hub(spec: TaskSpec, split: str, limit: int | None) -> list[MultipleChoiceExample]:
    hub_split = spec.hub_splits.get(split, split)
    source = f"{_hub_name(spec)} split {hub_split!r}"
    examples = [
        _convert(spec.parse_hub, row, f"{spec.name}/{split}/{i}", f"{source}, row {i + 1}")
        for i, row in enumerate(_hub_rows(spec, hub_split, limit))
    ]
    if not examples and limit != 0:
        raise DataError(f"{source} is empty: task {spec.name!r} split {split!r} has no rows")
    return examples


# --------------------------------------------------------------------------- public loader


def task_splits(name: str) -> tuple[str, ...]:
    """The split names of task ``name`` (``mmlu:<subject>`` included)."""
    return get_task(name).splits


def load_task(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[MultipleChoiceExample]:
    """Load ``split`` of task ``name`` as multiple-choice examples, in file order.

    The source is ``data_dir`` if given, else ``$BSLORA_DATA_DIR``, else the Hugging Face hub.
    ``limit`` keeps the first ``limit`` rows. Raises :class:`DataError` for an unknown task or
    split, a missing or empty file, or a malformed row (naming the file and line).
    """
    spec = get_task(name)
    split = _canonical_split(spec, split)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a non-negative integer, got {limit}")
    root = _resolve_data_dir(data_dir)
    if root is None:
        return _load_hub(spec, split, limit)
    return _load_local(spec, split, root, limit)
