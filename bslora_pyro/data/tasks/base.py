"""What every task family shares: the task spec and the data errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bslora_pyro.data.example import MultipleChoiceExample

DATA_DIR_ENV = "BSLORA_DATA_DIR"


class DataError(ValueError):
    """A task, split, file or row that cannot be loaded."""


class RowError(ValueError):
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


def validation_named(split: str) -> dict[str, Mapping[str, str]]:
    """:class:`TaskSpec` keywords of a task whose ``split`` is the hub's ``validation``."""
    return {"hub_splits": {split: "validation"}, "aliases": {"validation": split}}
