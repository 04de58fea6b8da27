"""Multiple-choice sets from your own files or any hub dataset, by column mapping.

A :class:`CustomTask` says where the rows are (a JSON Lines, JSON or CSV file, or with
``format="hub"`` a hub dataset id or a local dataset folder and its ``split``) and which
columns hold the question, the choices and the answer. Rows are read with
``datasets.load_dataset`` and become the same :class:`MultipleChoiceExample` as the built-in
tasks (prompts from :mod:`bslora_pyro.data.prompts`). Every problem raises
:class:`~bslora_pyro.data.tasks.DataError` in one line naming the file, its line or row, and
the column. A dotted column (``choices.text``) reads a field of a nested record.
"""

from __future__ import annotations

import contextlib
import csv
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .example import MultipleChoiceExample
from .prompts import LETTERS, letter_prompt, loglik_pairs
from .tasks import DataError
from .tasks.readers import parse_json_line

FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "hub")
ANSWER_TYPES: tuple[str, ...] = ("index", "letter", "text")
_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv"}  # datasets' packaged loaders
_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


class _CellError(ValueError):
    """A problem with one row; the caller adds where the row is."""


@dataclass(frozen=True)
class CustomTask:
    """Your own multiple-choice set.

    Args:
        path: a ``.jsonl`` / ``.json`` / ``.csv`` file, or a hub id or dataset folder.
        question: the column with the question text.
        choices: one column holding a list of choices, or one column per choice (empty
            trailing choice cells are dropped, so rows may have different numbers).
        answer: the column with the right answer, read as ``answer_type``: ``index``
            (0-based), ``letter`` (A, B, ...) or ``text`` (equal to one of the choices).
        format: ``jsonl``, ``json``, ``csv`` or ``hub``; inferred from a file's suffix.
        split / hub_config: the split and configuration of a hub dataset (``hub`` only).
        context: an optional passage column, put before the question.
        prompt: an optional template for the question text, e.g.
            ``"{passage}\\nQ: {question}"``: ``{question}`` and ``{context}`` are the mapped
            values, any other name is a column.
        id: an optional column of unique row ids (else the row's position).
        name: the set's label in metrics and reports (default: the file's stem, or
            ``<hub id>:<split>``).
    """

    path: str
    question: str
    choices: str | tuple[str, ...]
    answer: str
    answer_type: str = "index"
    format: str | None = None
    split: str | None = None
    hub_config: str | None = None
    context: str | None = None
    prompt: str | None = None
    id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        fmt = self.format if self.format is not None else _infer_format(self.path)
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        object.__setattr__(self, "format", fmt)
        if not isinstance(self.choices, str):
            object.__setattr__(self, "choices", tuple(self.choices))
            if len(self.choices) < 2:
                raise ValueError(f"choices lists {len(self.choices)} column(s); need at least 2")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, "
                             f"got {self.answer_type!r}")
        if fmt == "hub" and not self.split:
            raise ValueError(f"hub dataset {self.path!r} needs a split (e.g. split: validation)")
        if fmt != "hub" and (self.split is not None or self.hub_config is not None):
            raise ValueError("split and hub_config apply to format hub only; label a file "
                             "with name")
        if self.prompt is not None:
            template_fields(self.prompt)
        if self.name is not None and (not self.name.strip() or self.name.startswith("_")):
            raise ValueError(f"name must be non-empty and not start with '_', got {self.name!r}")

    @property
    def label(self) -> str:
        """The set's name in metrics, prediction files and reports."""
        if self.name:
            return self.name
        if self.format == "hub":
            base = f"{self.path}/{self.hub_config}" if self.hub_config else self.path
            return f"{base}:{self.split}"
        return Path(self.path).stem

    @property
    def source(self) -> tuple:
        """What identifies the rows (two sets with the same source hold the same rows)."""
        if self.format == "hub":
            return ("hub", self.path, self.hub_config, self.split)
        return ("file", str(Path(self.path).expanduser().resolve()))

    def describe(self) -> str:
        """Where the rows come from, for messages."""
        if self.format != "hub":
            return self.path
        config = f" ({self.hub_config})" if self.hub_config else ""
        return f"{self.path}{config} split {self.split!r}"


def _infer_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"cannot tell the format of {path!r} from its suffix: set format "
                         f"(jsonl, json, csv, or hub for a hub dataset id or folder)")
    return _SUFFIXES[suffix]


def template_fields(template: str) -> list[str]:
    """The names in braces of a prompt template; ``ValueError`` for a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"prompt template {template!r}: {error}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]"):
            raise ValueError(f"prompt template {template!r}: write a column name in braces, "
                             f"got {{{name}}}")
        names.append(name)
    return names


# --------------------------------------------------------------------------- reading rows


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars while loading (errors stay one line on stderr)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _reason(error: BaseException) -> str:
    cause = error.__cause__ or error
    return " ".join(str(cause).split()) or type(cause).__name__


def _jsonl_lines(path: Path) -> list[int]:
    """The line number of every record; invalid JSON or a non-object line is an error."""
    numbers = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parse_json_line(path, lineno, line)
            numbers.append(lineno)
    return numbers


def _csv_lines(path: Path) -> tuple[list[str], list[int]]:
    """The header and the first line number of every record (a quoted cell may span
    lines); a record whose cell count differs from the header's is an error."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        numbers, start = [], 1
        for cells in reader:
            row_start, start = start, reader.line_num + 1
            if not cells:
                continue  # blank line
            if header is None:
                header = cells
                _check_header(path, header)
            elif len(cells) != len(header):
                raise DataError(f"{path}, line {row_start}: {len(cells)} cells, but the header "
                                f"has {len(header)} columns")
            else:
                numbers.append(row_start)
    return header or [], numbers


def _check_header(path: Path, header: list[str]) -> None:
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise DataError(f"{path}, line 1: header column {position} has no name")
        if header.count(name) > 1:
            raise DataError(f"{path}, line 1: column {name!r} appears twice in the header")


def _load_file(task: CustomTask) -> tuple[Any, list[int] | None]:
    """The rows of a file through ``datasets`` and, for JSON Lines and CSV, each record's
    line number."""
    import datasets

    path = Path(task.path).expanduser()
    if not path.is_file():
        raise DataError(f"missing data file {path} (set {task.label!r})")
    kwargs: dict[str, Any] = {}
    try:
        if task.format == "jsonl":
            lines: list[int] | None = _jsonl_lines(path)
        elif task.format == "csv":
            header, lines = _csv_lines(path)
            # every cell as text, empty cells as "" (no NaN, no guessed number types)
            features = datasets.Features({c: datasets.Value("string") for c in header})
            kwargs = {"features": features, "na_filter": False}
        else:
            lines = None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if lines is not None and not lines:
        raise DataError(f"{path} is empty: set {task.label!r} has no rows")
    try:
        with _quiet_datasets():
            rows = datasets.load_dataset(_BUILDERS[task.format], data_files=str(path),
                                         split="train", **kwargs)
    except Exception as error:  # malformed JSON or CSV, unreadable file, cache problems
        raise DataError(f"{path}: could not be read as {task.format} ({_reason(error)})") from error
    return rows, lines


def _load_hub(task: CustomTask) -> Any:
    import datasets

    try:
        with _quiet_datasets():
            return datasets.load_dataset(task.path, task.hub_config, split=task.split)
    except Exception as error:  # network, unknown id, config or split
        raise DataError(f"could not load {task.describe()} ({_reason(error)}); check path, "
                        f"hub_config and split, or point path at a local file") from error


# --------------------------------------------------------------------------- cells


def _cell(row: Mapping[str, Any], column: str) -> Any:
    """``row[column]``; a dotted name walks into nested records."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise _CellError(f"column {column!r} is missing")
        value = value[part]
    return value


def _as_text(value: Any, what: str, allow_empty: bool = False) -> str:
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _CellError(f"{what} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text and not allow_empty:
        raise _CellError(f"{what} is empty")
    return text


def _choices(row: Mapping[str, Any], spec: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(spec, str):
        values = _cell(row, spec)
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise _CellError(f"column {spec!r} (choices) must hold a list of choices, got "
                             f"{type(values).__name__} (for one column per choice, list the "
                             "columns)")
        texts = [_as_text(v, f"choice {i + 1} of column {spec!r}") for i, v in enumerate(values)]
    else:
        cells = [_as_text(_cell(row, c), f"choice column {c!r}", allow_empty=True) for c in spec]
        while cells and not cells[-1]:
            cells.pop()  # rows with fewer choices leave the last columns empty
        for column, text in zip(spec, cells, strict=False):
            if not text:
                raise _CellError(f"choice column {column!r} is empty but a later one is not")
        texts = cells
    if len(texts) < 2:
        raise _CellError(f"{len(texts)} choice(s); need at least 2")
    if len(texts) > len(LETTERS):
        raise _CellError(f"{len(texts)} choices; at most {len(LETTERS)} are supported")
    return tuple(texts)


def _label(value: Any, answer_type: str, choices: tuple[str, ...], column: str) -> int:
    """The index of the right choice."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _CellError(f"column {column!r} (answer) is empty")
    n = len(choices)
    if answer_type == "index":
        text = str(value).strip()
        if isinstance(value, bool) or not (isinstance(value, int) or text.isdigit()):
            raise _CellError(f"answer {value!r} is not a 0-based choice index")
        index = int(text)
        if not 0 <= index < n:
            raise _CellError(f"answer {index} is not among the {n} choices (index 0 to {n - 1})")
        return index
    if answer_type == "letter":
        text = str(value).strip().upper()
        if len(text) != 1 or text not in LETTERS:
            raise _CellError(f"answer {value!r} is not a choice letter")
        if LETTERS.index(text) >= n:
            raise _CellError(f"answer {text!r} is not among the choices A-{LETTERS[n - 1]}")
        return LETTERS.index(text)
    text = _as_text(value, f"column {column!r} (answer)")
    matches = [i for i, choice in enumerate(choices) if choice == text]
    if not matches:
        raise _CellError(f"answer {text!r} is not among the choices {list(choices)}")
    if len(matches) > 1:
        raise _CellError(f"answer {text!r} matches {len(matches)} identical choices")
    return matches[0]


def _question_text(task: CustomTask, row: Mapping[str, Any], question: str,
                   context: str | None) -> str:
    """The text the prompts are built from: the template filled in, else the question
    (after the context, when there is one)."""
    if task.prompt is None:
        return question if not context else f"{context} {question}"
    values = {"question": question, "context": context or ""}
    for name in template_fields(task.prompt):
        if name not in values:
            values[name] = _as_text(_cell(row, name), f"column {name!r}", allow_empty=True)
    return task.prompt.format_map(values).strip()


def _example(task: CustomTask, row: Mapping[str, Any], index: int) -> MultipleChoiceExample:
    question = _as_text(_cell(row, task.question), f"column {task.question!r} (question)")
    choices = _choices(row, task.choices)
    label = _label(_cell(row, task.answer), task.answer_type, choices, task.answer)
    context = None
    if task.context is not None:
        context = _as_text(_cell(row, task.context), f"column {task.context!r} (context)",
                           allow_empty=True) or None
    key = index if task.id is None else _as_text(_cell(row, task.id), f"column {task.id!r} (id)")
    text = _question_text(task, row, question, context)
    return MultipleChoiceExample(
        uid=f"{task.label}/{key}",
        question=text if task.prompt is not None else question,
        choices=choices,
        label=label,
        letter_prompt=letter_prompt(text, choices),
        loglik_pairs=loglik_pairs(text, choices),
        context=None if task.prompt is not None else context,
    )


def _check_columns(task: CustomTask, columns: Sequence[str]) -> None:
    """Every mapped column (and template name) exists, before any row is read."""
    choices = (task.choices,) if isinstance(task.choices, str) else task.choices
    wanted = [(task.question, "question"), *((c, "choices") for c in choices),
              (task.answer, "answer"), (task.context, "context"), (task.id, "id")]
    wanted += [(name, "prompt") for name in template_fields(task.prompt or "")
               if name not in ("question", "context")]
    for column, role in wanted:
        if column is not None and column not in columns and column.split(".")[0] not in columns:
            listed = ", ".join(repr(c) for c in columns)
            raise DataError(f"{task.describe()}: no column {column!r} ({role}); its columns are "
                            f"{listed}")


# --------------------------------------------------------------------------- public loader


def load_custom(task: CustomTask, limit: int | None = None) -> list[MultipleChoiceExample]:
    """The rows of ``task`` as multiple-choice examples, in file order (the first ``limit``).

    Raises :class:`DataError` for a missing or empty file, a missing column, or a malformed
    row (naming the file and its line, or the row of a hub dataset or JSON file).
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a non-negative integer, got {limit}")
    if task.format == "hub":
        rows, lines = _load_hub(task), None
    else:
        rows, lines = _load_file(task)
    if len(rows) == 0:
        raise DataError(f"{task.describe()} is empty: set {task.label!r} has no rows")
    _check_columns(task, rows.column_names)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    examples, seen = [], {}
    for index, row in enumerate(rows):
        where = f"line {lines[index]}" if lines is not None else f"row {index + 1}"
        try:
            example = _example(task, row, index)
        except _CellError as error:
            raise DataError(f"{task.describe()}, {where}: {error}") from None
        if example.uid in seen:
            raise DataError(f"{task.describe()}, {where}: id {example.uid!r} repeats "
                            f"{seen[example.uid]}")
        seen[example.uid] = where
        examples.append(example)
    return examples
