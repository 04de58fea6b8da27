"""Typed experiment configuration read from YAML; an unknown key, a value of the wrong type
or outside its declared range (``bslora_pyro.typed``) is a one-line error naming it."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.experiment.tracking import TrackingConfig
from bslora_pyro.inference.svi import TrainConfig
from bslora_pyro.methods import MethodError, check_options
from bslora_pyro.scoring.modes import MODES as SCORING_NAMES
from bslora_pyro.typed import (
    ConfigError,
    NonNegativeInt,
    PositiveInt,
    Seed,
    UnitFloat,
    build_dataclass,
    check_ranges,
)


@dataclass
class ModelConfig:
    """The backbone and how answers are scored.

    ``name``: hub id, local folder, or the offline aliases ``smollm2-135m`` / ``minilm`` /
    ``gemma3-270m``.
    ``scoring``: ``letter`` (paper), ``choice_loglik`` (small LMs; summed continuation
    log-probability), ``choice_loglik_mean`` (its mean per token) or ``encoder``.
    """

    name: str = "smollm2-135m"
    scoring: str = "choice_loglik"
    dtype: str = "float32"
    device: str = "auto"
    max_length: PositiveInt = 300
    trust_remote_code: bool = False
    quantization: str | None = None  # null | 4bit | 8bit (bitsandbytes, CUDA only)

    def __post_init__(self) -> None:
        check_ranges(self, "model")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ConfigError(
                f"model.quantization must be null, 4bit or 8bit, got {self.quantization!r}"
            )
        if self.scoring not in SCORING_NAMES:
            raise ConfigError(
                f"model.scoring must be one of {', '.join(SCORING_NAMES)}, got {self.scoring!r}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


#: a key added after runs were made: left out of ``to_dict`` at its default, so the saved
#: config of an earlier run (and the grid's same-config check) stays as it was
_ADDED = {"omit_at_default": True}

#: the keys of your own data (see ``bslora_pyro.data.custom.CustomTask``)
CUSTOM_KEYS = ("path", "format", "hub_config", "name", "question", "choices", "answer",
               "answer_type", "context", "prompt", "id")


def only_split(task: str) -> str | None:
    """The split of a built-in task that has exactly one, else None."""
    from bslora_pyro.data import TASK_SPLITS

    splits = TASK_SPLITS.get(task, ())
    return splits[0] if len(splits) == 1 else None


@dataclass
class SplitConfig:
    """One set: a built-in ``task`` (``bslora_pyro.data.available_tasks()``) and its
    ``split``, or your own multiple-choice data: ``path`` (a .jsonl/.json/.csv file, or with
    ``format: hub`` a hub dataset id and its ``split``) and the columns ``question``,
    ``choices`` (one column holding a list, or a list of columns) and ``answer`` (read as
    ``answer_type``: index, letter or text), optionally ``context``, ``prompt`` (a template),
    ``id``, ``hub_config`` and ``name`` (the set's label). A task with one split (an
    unlabelled OOD set such as ``movie_plots``) needs no ``split``."""

    task: str | None = None
    split: str | None = None
    limit: PositiveInt | None = None
    path: str | None = field(default=None, metadata=_ADDED)
    format: str | None = field(default=None, metadata=_ADDED)
    hub_config: str | None = field(default=None, metadata=_ADDED)
    name: str | None = field(default=None, metadata=_ADDED)
    question: str | None = field(default=None, metadata=_ADDED)
    choices: str | list[str] | None = field(default=None, metadata=_ADDED)
    answer: str | None = field(default=None, metadata=_ADDED)
    answer_type: str | None = field(default=None, metadata=_ADDED)
    context: str | None = field(default=None, metadata=_ADDED)
    prompt: str | None = field(default=None, metadata=_ADDED)
    id: str | None = field(default=None, metadata=_ADDED)

    def __post_init__(self) -> None:
        check_ranges(self, "split")
        if self.path is None:
            given = [key for key in CUSTOM_KEYS if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{given[0]} needs path (your own data file or hub dataset)")
            if self.task is not None and self.split is None:
                self.split = only_split(self.task)
            if self.task is None or self.split is None:
                raise ValueError("give task and split (a built-in task) or path (your own data)")
            return
        if self.task is not None:
            raise ValueError("give either task (a built-in task) or path (your own data)")
        missing = [key for key in ("question", "choices", "answer") if getattr(self, key) is None]
        if missing:
            raise ValueError(f"path {self.path!r} needs the column mapping: set "
                             f"{', '.join(missing)}")
        self.custom_task()  # checks the mapping

    def custom_task(self):
        """The :class:`~bslora_pyro.data.custom.CustomTask` of a set given by ``path``."""
        from bslora_pyro.data.custom import CustomTask

        mapping = {key: getattr(self, key) for key in CUSTOM_KEYS if getattr(self, key) is not None}
        return CustomTask(**mapping, split=self.split)

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.custom_task().label
        return f"{self.task}:{self.split}"

    @property
    def source(self) -> tuple:
        """What identifies the set's rows (the same for a training and an evaluation set
        drawn from the same data)."""
        if self.path is not None:
            return self.custom_task().source
        return (self.task, self.split)


@dataclass
class DataConfig:
    """Training split and evaluation splits (the first is in-distribution; the rest are
    distribution shifts scored for OOD detection against it).

    The validation split, on which early stopping, post-hoc temperatures and every tuned
    setting are chosen (never on an evaluation set), is either ``validation_fraction`` of
    the training split (a permutation seeded with ``validation_seed``, the same for every
    method and seed) or a set of its own, ``validation`` (e.g. a task's dev split: the same
    questions whatever the training set's size). Neither (default): no validation split.
    """

    dir: str | None = None
    train: SplitConfig = field(default_factory=lambda: SplitConfig("arc_easy", "train", 600))
    eval: list[SplitConfig] = field(
        default_factory=lambda: [SplitConfig("arc_easy", "dev", 300)]
    )
    validation_fraction: UnitFloat = 0.0
    validation_seed: Seed = 0
    validation: SplitConfig | None = field(default=None, metadata=_ADDED)

    def __post_init__(self) -> None:
        check_ranges(self, "data")
        if not self.eval:
            raise ConfigError("data.eval must list at least one evaluation split")
        labels = [split.label for split in self.eval]
        for split, label in zip(self.eval, labels, strict=True):
            if split.path is not None and labels.count(label) > 1:
                raise ConfigError(f"data.eval: two sets are labelled {label!r}; set name on one")
        if self.validation is not None and self.validation_fraction > 0:
            raise ConfigError("give data.validation (a set of its own) or "
                              "data.validation_fraction (part of the training split), not both")

    @property
    def has_validation(self) -> bool:
        """Whether a validation split is configured."""
        return self.validation is not None or self.validation_fraction > 0


@dataclass
class PredictConfig:
    """Posterior predictive: ``num_samples`` gate draws (M; ``num_draws`` inside the
    library), questions per batch.

    ``posthoc_temperature``: also report every set under one temperature fitted on the
    validation split (``data.validation_fraction``) to the method's own predictive (each
    draw's logits divided by T, then averaged): the ``<method> + T`` rows of comparisons.
    """

    num_samples: PositiveInt = 10
    batch_size: PositiveInt = 8
    posthoc_temperature: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, "predict")


@dataclass
class ExperimentConfig:
    """Everything one run needs. ``method_options`` go to the method's ``build`` (checked
    here against the method's options dataclass, ``bslora_pyro.methods``)."""

    name: str = "experiment"
    seed: Seed = 0
    method: str = "bslora"
    method_options: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    log_every: PositiveInt = 10
    checkpoint_every: NonNegativeInt = 50  # 0: no checkpoints
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata=_ADDED)

    def __post_init__(self) -> None:
        check_ranges(self, "")
        try:  # the method's options are typed too: refuse a bad one before any training
            check_options(self.method, self.method_options, self.adapter)
        except MethodError as error:
            raise ConfigError(str(error)) from None
        needs_validation = [key for key, on in (
            ("train.validate_every", self.train.validate_every > 0),
            ("predict.posthoc_temperature", self.predict.posthoc_temperature),
        ) if on]
        if needs_validation and not self.data.has_validation:
            raise ConfigError(
                f"{needs_validation[0]} needs a validation split: set data.validation_fraction "
                "or data.validation"
            )

    def to_dict(self) -> dict:
        return _plain(self)


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``, less the keys marked ``_ADDED`` that hold their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("omit_at_default") and item == _default(f):
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default




def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
):
    """Read a YAML config (or defaults), apply ``--set`` overrides, validate; a
    ``data_dir`` (the ``--data-dir`` option) replaces ``data.dir``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
    config = build_dataclass(ExperimentConfig, apply_overrides(data, overrides or []))
    if data_dir:
        config.data.dir = data_dir
    return config
