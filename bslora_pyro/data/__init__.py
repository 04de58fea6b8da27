"""Benchmark data: the multiple-choice record type, prompts and task loaders."""

from .example import MultipleChoiceExample
from .tasks import TASK_SPLITS, DataError, available_tasks, load_task

__all__ = ["TASK_SPLITS", "DataError", "MultipleChoiceExample", "available_tasks", "load_task"]
