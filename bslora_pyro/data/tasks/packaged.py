"""Tasks whose data files ship inside an installed Python package, read but never imported.

A :class:`PackagedTask` is the third kind of built-in task, beside local files under a data
directory and hub datasets (:class:`~bslora_pyro.data.tasks.base.TaskSpec`): its loader builds
a whole split from files found in the package's folder. The folder is located with
``importlib.util.find_spec`` on the top-level name, which finds a package without running its
code, so the package's own dependencies need not be installed.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.tasks.base import DataError


class PackageMissing(DataError):
    """The package a task reads its files from is not installed."""


@dataclass(frozen=True)
class PackagedTask:
    """A built-in task built from files an installed package ships.

    ``load_split`` returns a whole split (canonical name) in its fixed order; ``aliases`` maps
    accepted alternative split names to ours; ``labelled`` is False for a set without answers
    (scored for OOD detection only).
    """

    name: str
    splits: tuple[str, ...]
    load_split: Callable[[str], list[MultipleChoiceExample]]
    labelled: bool = True
    aliases: Mapping[str, str] = field(default_factory=dict)


def package_root(package: str) -> Path | None:
    """The folder of the installed top-level ``package``, or None; the package is located,
    not imported (``find_spec`` of a top-level name runs none of its code)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str, task: str, install: str) -> Path:
    """``relative`` inside the installed ``package``; :class:`PackageMissing` (one line naming
    ``task`` and the ``install`` command) when the package is absent."""
    root = package_root(package)
    if root is None:
        raise PackageMissing(
            f"task {task!r} reads its data from the {package} package, which is not "
            f"installed: {install}"
        )
    path = root / relative
    if not path.is_file():
        raise DataError(f"task {task!r}: {path} is missing from the installed {package} "
                        f"package; reinstall it: {install}")
    return path


def read_bz2_csv(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of a bz2-compressed CSV file with a header, as ``(first line, row)``; a
    missing column or an unreadable file is a :class:`DataError` naming the file."""
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r}; its columns are "
                                f"{', '.join(repr(c) for c in header)}")
            start = 2  # after the header line
            for row in reader:
                yield start, row
                start = reader.line_num + 1  # a quoted cell may span lines
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable bz2-compressed UTF-8 CSV file "
                        f"({type(error).__name__}: {error})") from None
