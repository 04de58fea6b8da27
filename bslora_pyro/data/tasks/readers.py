"""Readers of a task's rows: local JSON Lines and CSV files, and the Hugging Face hub.

Every problem raises :class:`DataError` naming the file and line (or the hub row) at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.tasks.base import DATA_DIR_ENV, DataError, Row, RowParser, TaskSpec
from bslora_pyro.data.tasks.winogrande import winogrande_label


def _open_text(path: Path, spec: TaskSpec) -> TextIO:
    if not path.is_file():
        raise DataError(f"missing file {path}; {spec.layout()}")
    return path.open(encoding="utf-8", newline="")


def _nonblank_lines(path: Path, spec: TaskSpec) -> list[tuple[int, str]]:
    """Stripped non-blank lines of a text file with their 1-based line numbers."""
    with _open_text(path, spec) as handle:
        lines = handle.read().split("\n")
    return [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]


def parse_json_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
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
        label = winogrande_label(label_text)
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
        row = parse_json_line(path, lineno, line)
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


def load_local(
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


def load_hub(spec: TaskSpec, split: str, limit: int | None) -> list[MultipleChoiceExample]:
    hub_split = spec.hub_splits.get(split, split)
    source = f"{_hub_name(spec)} split {hub_split!r}"
    examples = [
        _convert(spec.parse_hub, row, f"{spec.name}/{split}/{i}", f"{source}, row {i + 1}")
        for i, row in enumerate(_hub_rows(spec, hub_split, limit))
    ]
    if not examples and limit != 0:
        raise DataError(f"{source} is empty: task {spec.name!r} split {split!r} has no rows")
    return examples
