"""What a run is built from: device, seed, data, backbone and scorer, the method; and a
finished run read back (its config, its trained method)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, ExperimentConfig, SplitConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":  # cuda:LOCAL_RANK under a multi-process launch
        from bslora_pyro.inference.distributed import local_cuda_device

        return local_cuda_device() if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_split(split: SplitConfig, data_dir: str | None) -> list:
    """A built-in task's split (from ``data_dir`` or the hub), or your own data (``path``)."""
    from bslora_pyro.data import load_task

    if split.path is not None:
        from bslora_pyro.data.custom import load_custom

        return load_custom(split.custom_task(), limit=split.limit)
    return load_task(split.task, split.split, data_dir=data_dir, limit=split.limit)


def load_training_data(config: ExperimentConfig) -> tuple[list, list]:
    """``(train, validation)``: the training split and the validation split, which is
    ``data.validation`` or the seeded ``data.validation_fraction`` of the training split
    (empty when neither is set). An unlabelled training or validation split is refused, and
    so is an evaluation or validation set drawn from the training split itself, so no
    evaluation question is trained or validated on (the evaluation sets are read by
    :func:`load_eval_data`)."""
    from bslora_pyro.data import DataError
    from bslora_pyro.data.validation import split_validation

    train = load_split(config.data.train, config.data.dir)
    if not train:
        raise DataError(f"data.train {config.data.train.label} has no examples "
                        f"(limit={config.data.train.limit})")
    refuse_unlabelled(train, f"data.train {config.data.train.label}", "train")
    validation: list = []
    if config.data.validation is not None:
        split = config.data.validation
        if split.source == config.data.train.source:
            raise ConfigError(f"data.validation {split.label} is the training split; use "
                              "another split or data.validation_fraction")
        validation = load_split(split, config.data.dir)
        if not validation:
            raise DataError(f"data.validation {split.label} has no examples "
                            f"(limit={split.limit})")
        refuse_unlabelled(validation, f"data.validation {split.label}", "validate")
    elif config.data.validation_fraction > 0:
        try:
            train, validation = split_validation(train, config.data.validation_fraction,
                                                 config.data.validation_seed)
        except ValueError as error:
            raise ConfigError(f"data.validation_fraction: {error}") from None
    for split in config.data.eval:
        for role, other in (("training", config.data.train), ("validation",
                                                              config.data.validation)):
            if other is not None and split.source == other.source:
                raise ConfigError(
                    f"data.eval {split.label} is the {role} split; evaluate on another split "
                    "(tuned settings use data.validation_fraction or data.validation)"
                )
    return train, validation


def refuse_unlabelled(examples: list, where: str, use: str) -> None:
    """A one-line error when an example of ``examples`` has no answer (an OOD set)."""
    from bslora_pyro.data import DataError

    unlabelled = next((ex for ex in examples if not ex.labelled), None)
    if unlabelled is not None:
        raise DataError(f"{where} is an unlabelled set (example {unlabelled.uid!r} has no "
                        f"answer); {use} on a labelled split and list it under data.eval "
                        "after the in-distribution set, for OOD detection")


def load_eval_set(split: SplitConfig, data_dir: str | None, where: str) -> list:
    """One evaluation set read in full, so a bad row fails now rather than after the
    backbone has loaded and the method trained; an empty set is an error naming ``where``."""
    from bslora_pyro.data import DataError

    examples = load_split(split, data_dir)
    if not examples:
        raise DataError(f"{where} {split.label} has no examples (limit={split.limit})")
    return examples


def load_eval_data(config: ExperimentConfig) -> list[list]:
    """The examples of every ``data.eval`` set, in order (see :func:`load_eval_set`); the
    first, the in-distribution reference of the OOD scores, must be labelled."""
    sets = [load_eval_set(split, config.data.dir, "data.eval") for split in config.data.eval]
    refuse_unlabelled(sets[0], f"data.eval[0] {config.data.eval[0].label} (the "
                      "in-distribution set)", "evaluate")
    return sets


def build_scorer_and_backbone(config: ExperimentConfig):
    from bslora_pyro.backbones import load_backbone
    from bslora_pyro.scoring import ChoiceScorer

    task = "multiple_choice" if config.model.scoring == "encoder" else "causal_lm"
    backbone, tokenizer = load_backbone(
        config.model.name,
        task=task,
        dtype=DTYPES[config.model.dtype],
        trust_remote_code=config.model.trust_remote_code,
        device=resolve_device(config.model.device),
        quantization=config.model.quantization,
    )
    scorer = ChoiceScorer(tokenizer, config.model.scoring, max_length=config.model.max_length,
                          prefix_start=lowest_adapted_block(config, backbone))
    return backbone, scorer


def lowest_adapted_block(config: ExperimentConfig, backbone) -> int | None:
    """The lowest block the config adapts (``None``: all), where the frozen prefix ends."""
    from bslora_pyro.adapter.inject import num_blocks, resolve_layers

    blocks = resolve_layers(config.adapter.layers, num_blocks(backbone))
    return None if blocks is None else min(blocks)


def build_method(config: ExperimentConfig, backbone, scorer):
    from bslora_pyro.methods import build_method as build

    # "{seed}" in a string option is the run's seed (e.g. random_mask's match_run of a grid)
    options = {k: v.replace("{seed}", str(config.seed)) if isinstance(v, str) else v
               for k, v in config.method_options.items()}
    try:
        method = build(config.method, backbone, scorer, config.adapter, options)
    except TypeError as error:  # an unknown keyword in method_options (guide, prior_kwargs)
        raise ConfigError(f"method_options of method {config.method!r}: {error}") from None
    if isinstance(method, torch.nn.Module):
        method.to(resolve_device(config.model.device))
    return method


def read_run_config(run_dir: Path) -> ExperimentConfig:
    from bslora_pyro.experiment.config import build_dataclass

    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {rundir.CONFIG} is missing")
    data = yaml.safe_load(path.read_text())
    data.get("data", {}).pop("heldout_fraction", None)  # an unused key of earlier versions
    return build_dataclass(ExperimentConfig, data)


def load_trained_method(run_dir: Path, config: ExperimentConfig):
    """Rebuild the run's method on a fresh backbone and load its saved weights."""
    from bslora_pyro.methods import method_module

    backbone, scorer = build_scorer_and_backbone(config)
    return method_module(config.method).load(Path(run_dir) / rundir.WEIGHTS, backbone, scorer)
