"""The evaluation set named on the ``bslora evaluate`` command line."""

from __future__ import annotations

import yaml

from bslora_pyro.experiment.config import (
    ConfigError,
    ExperimentConfig,
    SplitConfig,
    build_dataclass,
    only_split,
)
from bslora_pyro.typed import check_field

FILE_PREFIX = "file:"
HUB_PREFIX = "hub:"
#: the column mapping a ``file:`` or ``hub:`` set takes over from the run's training set
MAPPING_KEYS = ("question", "choices", "answer", "answer_type", "context", "prompt", "id")
_COLUMN_KEYS = (*MAPPING_KEYS, "format", "hub_config", "name")


def parse_columns(items: list[str]) -> dict:
    """``KEY=VALUE`` items (values read as YAML, e.g. ``choices=[A, B, C]``) as a mapping."""
    mapping = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--column expects KEY=VALUE, got {item!r}")
        if key not in _COLUMN_KEYS:
            raise ConfigError(f"--column {key}: not a column mapping key; use one of "
                              f"{', '.join(_COLUMN_KEYS)}")
        try:
            mapping[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--column {item!r}: the value is not valid YAML") from None
    return mapping


def evaluation_split(config: ExperimentConfig, task: str, split: str | None,
                     limit: int | None, columns: list[str]) -> SplitConfig:
    """A built-in ``task`` (``split`` default: its only split, else dev), or ``file:PATH`` / ``hub:ID`` read with
    the run's training-set column mapping (when it was your own data) updated by
    ``columns``; ``limit`` is checked as the config key ``limit`` is."""
    limit = check_field(SplitConfig, "limit", limit, "--limit")
    if not task.startswith((FILE_PREFIX, HUB_PREFIX)):
        if columns:
            raise ConfigError("--column applies to --task file:PATH or hub:ID only")
        return SplitConfig(task, split or only_split(task) or "dev", limit)
    kind, _, path = task.partition(":")
    if not path:
        raise ConfigError(f"--task {task!r}: give a path after {kind}:")
    train = config.data.train
    mapping = {}
    if train.path is not None:
        mapping = {k: getattr(train, k) for k in MAPPING_KEYS if getattr(train, k) is not None}
    mapping.update(parse_columns(columns))
    mapping.update(path=path, limit=limit)
    if kind == "hub":
        mapping.update(format="hub", split=split)
    elif split is not None:
        raise ConfigError("--split applies to built-in tasks and hub: datasets, not to a file")
    return build_dataclass(SplitConfig, mapping, f"--task {task}")
