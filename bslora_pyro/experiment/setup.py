"""What a run is built from: device, seed, data, backbone and scorer, the method; and a
finished run read back (its config, its trained method)."""

from __future__ import annotations

import dataclasses
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
    """``(train, validation)``: the training split, less the seeded validation part
    (``data.validation_fraction``; empty when 0); an unlabelled training split is refused, and
    so is an evaluation set drawn from the training split itself, so no evaluation question is
    trained or validated on."""
    from bslora_pyro.data import DataError
    from bslora_pyro.data.validation import split_validation

    train = load_split(config.data.train, config.data.dir)
    if not train:
        raise DataError(f"data.train {config.data.train.label} has no examples "
                        f"(limit={config.data.train.limit})")
    unlabelled = next((ex for ex in train if not ex.labelled), None)
    if unlabelled is not None:
        raise DataError(f"data.train {config.data.train.label} is an unlabelled set (example "
                        f"{unlabelled.uid!r} has no answer); train on a labelled split and list "
                        "it under data.eval for OOD detection")
    validation: list = []
    if config.data.validation_fraction > 0:
        try:
            train, validation = split_validation(train, config.data.validation_fraction,
                                                 config.data.validation_seed)
        except ValueError as error:
            raise ConfigError(f"data.validation_fraction: {error}") from None
    for split in config.data.eval:  # fail on a bad eval set before spending time training
        if split.source == config.data.train.source:
            raise ConfigError(
                f"data.eval {split.label} is the training split; evaluate on another split "
                "(tuned settings use data.validation_fraction)"
            )
        probe = 1 if split.limit is None else min(split.limit, 1)
        if not load_split(dataclasses.replace(split, limit=probe), config.data.dir):
            raise DataError(f"data.eval {split.label} has no examples (limit={split.limit})")
    return train, validation


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

    try:
        method = build(config.method, backbone, scorer, config.adapter, config.method_options)
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
