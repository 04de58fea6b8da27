"""Built-in tasks, one module per task family.

``registry`` (names, splits, :func:`load_task`), ``readers`` (local JSON Lines and CSV
files, the Hugging Face hub), ``packaged`` (files an installed package ships), ``base`` (the
task spec, :class:`DataError`, row helpers) and the families: the BLoB benchmark's ``arc``
(ARC-E/C, OpenBookQA), ``winogrande``, ``boolq``, ``mmlu``, and ``sentiment`` (movie reviews
and two unlabelled OOD sets).
"""

from __future__ import annotations

from bslora_pyro.data.tasks.base import DATA_DIR_ENV, DataError, TaskSpec
from bslora_pyro.data.tasks.mmlu import MMLU_PREFIX, MMLU_SUBJECTS
from bslora_pyro.data.tasks.packaged import PackagedTask
from bslora_pyro.data.tasks.registry import (
    TASK_SPLITS,
    available_tasks,
    get_task,
    load_task,
    task_splits,
)

__all__ = [
    "DATA_DIR_ENV",
    "MMLU_PREFIX",
    "MMLU_SUBJECTS",
    "TASK_SPLITS",
    "DataError",
    "PackagedTask",
    "TaskSpec",
    "available_tasks",
    "get_task",
    "load_task",
    "task_splits",
]
