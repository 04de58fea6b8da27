"""Train a method from a config, evaluate it, and fill a run directory."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch
import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, ExperimentConfig, SplitConfig
from bslora_pyro.experiment.evaluation import set_metrics
from bslora_pyro.inference.checkpoint import CHECKPOINT_DIR

log = logging.getLogger("bslora_pyro")

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
    (``data.validation_fraction``; empty when 0); an evaluation set drawn from the training
    split itself is refused, so no evaluation question is trained or validated on."""
    from bslora_pyro.data import DataError
    from bslora_pyro.data.validation import split_validation

    train = load_split(config.data.train, config.data.dir)
    if not train:
        raise DataError(f"data.train {config.data.train.label} has no examples "
                        f"(limit={config.data.train.limit})")
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


def _log_step(run_dir: Path, config: ExperimentConfig, method, tracker=None):
    def on_step(trainer, record: dict) -> None:
        rundir.append_jsonl(run_dir / rundir.TRAIN_LOG, record)
        if tracker is not None:
            tracker.log_step(trainer, record)
        step = record["step"]
        if step % config.log_every == 0 or step == config.train.steps:
            gates = method.gate_probabilities()
            if gates is not None:
                probs = {k: [round(float(x), 5) for x in v] for k, v in gates.items()}
                rundir.append_jsonl(run_dir / rundir.GATE_LOG, {"step": step, "probs": probs})

    return on_step


def train_method(config: ExperimentConfig, method, train_examples, run_dir: Path, progress=True,
                 resume: bool = False, validation: list | None = None, tracker=None) -> dict:
    """Run SVI (and any post-hoc fitting the method asks for); ``resume`` continues from
    the run directory's latest checkpoint. With ``train.validate_every`` the ``validation``
    examples are scored during training, and with ``train.early_stopping`` the best
    validated step's weights are restored; returns what early stopping did (or ``{}``).
    A ``tracker`` (``experiment.tracking``) gets every step's record."""
    if not method.trainable:
        return {}
    if method.trains_itself:  # several members (deep ensemble), or part of the data
        if resume:
            raise ConfigError(f"--resume is not supported for method {config.method!r}")
        if config.train.validate_every:
            raise ConfigError(f"train.validate_every is not supported for method "
                              f"{config.method!r} (it trains its own members)")
        method.fit(train_examples, method.scorer.encode, config.train, progress=progress,
                   on_step=_log_step(run_dir, config, method, tracker))
        return {}
    return _train_with_checkpoints(config, method, train_examples, run_dir, progress, resume,
                                   validation or [], tracker)


def _validation_monitor(config: ExperimentConfig, method, validation: list, run_dir: Path):
    """The ``on_step`` hook scoring ``validation`` with the method's predictive."""
    from bslora_pyro.inference.early_stopping import ValidationMonitor
    from bslora_pyro.inference.predictive import predict
    from bslora_pyro.metrics import negative_log_likelihood

    device = resolve_device(config.model.device)

    def validation_nll() -> float:
        preds = predict(method, validation, method.scorer.encode,
                        num_samples=config.predict.num_samples,
                        batch_size=config.predict.batch_size, device=device, progress=False,
                        seed=config.seed)
        return negative_log_likelihood(preds.probs, preds.labels)

    train = config.train
    return ValidationMonitor(validation_nll, train.validate_every, train.early_stopping,
                             train.patience, run_dir / rundir.EARLY_STOPPING)


def _train_with_checkpoints(config: ExperimentConfig, method, train_examples, run_dir: Path,
                            progress: bool, resume: bool, validation: list,
                            tracker=None) -> dict:
    """SVI (accelerate when launched on several processes) with checkpoints every
    ``config.checkpoint_every`` steps in ``run_dir/checkpoint``; a NaN stops with a message."""
    from bslora_pyro.inference import checkpoint
    from bslora_pyro.inference.distributed import build_trainer
    from bslora_pyro.inference.svi import TrainingError

    trainer = build_trainer(method, method.scorer.encode, config.train,
                            resolve_device(config.model.device))
    main = getattr(trainer, "is_main_process", True)
    saver = checkpoint.Checkpointer(run_dir / checkpoint.CHECKPOINT_DIR, config.checkpoint_every,
                                    enabled=main and getattr(trainer, "supports_checkpoints", True))
    monitor = None
    if config.train.validate_every:
        monitor = _validation_monitor(config, method, validation, run_dir)
        if not main:
            monitor.folder = None  # every process validates (same decisions); main writes
    if resume:
        checkpoint.resume(trainer, saver.root)
        if monitor is not None:
            monitor.load(trainer)
        if main:  # drop log lines written after the checkpoint
            gates = [r for r in rundir.read_jsonl(run_dir / rundir.GATE_LOG)
                     if r["step"] <= trainer.step]
            for name, records in ((rundir.TRAIN_LOG, trainer.history), (rundir.GATE_LOG, gates)):
                rundir.atomic_write_text(run_dir / name, "".join(json.dumps(r) + "\n"
                                                                 for r in records))
    log_step = _log_step(run_dir, config, method, tracker)

    def on_step(trainer, record: dict) -> None:
        if monitor is not None:
            monitor(trainer, record)  # adds val_nll to the record before it is logged
        if main:
            log_step(trainer, record)
            saver(trainer, record)

    try:
        trainer.fit(train_examples, progress=progress and main, on_step=on_step)
    except TrainingError as error:
        raise TrainingError(f"{error}; {saver.describe()}") from None
    if monitor is not None and config.train.early_stopping:
        return monitor.restore_best(trainer)
    return {}


def save_method(method, run_dir: Path) -> None:
    """Every trained method saves itself (zero-shot has nothing to save)."""
    method.save(run_dir / rundir.WEIGHTS)


def _predict(config: ExperimentConfig, method, examples: list, progress: bool):
    from bslora_pyro.inference.predictive import predict

    return predict(method, examples, method.scorer.encode,
                   num_samples=config.predict.num_samples,
                   batch_size=config.predict.batch_size,
                   device=resolve_device(config.model.device), progress=progress,
                   seed=config.seed)


def evaluate_sets(
    config: ExperimentConfig,
    method,
    splits: list[SplitConfig],
    run_dir: Path,
    reference=None,
    progress: bool = True,
    temperature: float | None = None,
) -> tuple[dict, dict]:
    """Predict each split, write its predictions file, and return its metrics; with a
    ``temperature``, also the metrics of the tempered predictive (else ``{}``)."""
    from bslora_pyro.inference.temperature import temper

    results, tempered = {}, {}
    tempered_reference = None
    if reference is not None and temperature is not None:
        tempered_reference = temper(reference, temperature)
    for split in splits:
        examples = load_split(split, config.data.dir)
        started = time.perf_counter()
        preds = _predict(config, method, examples, progress)
        seconds = time.perf_counter() - started
        metrics = set_metrics(preds, reference)
        if reference is None:  # the first set is in-distribution: the others' reference
            reference = preds
        metrics["predict_seconds"] = round(seconds, 2)
        results[split.label] = metrics
        rundir.write_predictions(run_dir, split.label, [e.uid for e in examples], preds)
        log.info("%s: %s", split.label, json.dumps(metrics))
        if temperature is not None:
            scaled = temper(preds, temperature)
            tempered[split.label] = set_metrics(scaled, tempered_reference)
            if tempered_reference is None:
                tempered_reference = scaled
    return results, tempered


def validate_and_calibrate(config: ExperimentConfig, method, validation: list, run_dir: Path,
                           progress: bool = True) -> tuple[dict, float | None]:
    """Metrics of the trained method on the validation split (its predictions are written
    to the run directory) and, with ``predict.posthoc_temperature``, the temperature fitted
    there (else ``None``)."""
    if not validation:
        return {}, None
    preds = _predict(config, method, validation, progress)
    path = run_dir / rundir.VALIDATION_PREDICTIONS
    rundir.write_predictions(run_dir, "validation", [e.uid for e in validation], preds, path)
    return _validation_summary(config, preds)


def _validation_summary(config: ExperimentConfig, preds) -> tuple[dict, float | None]:
    from bslora_pyro.inference.temperature import fit_temperature

    summary = set_metrics(preds)
    if not config.predict.posthoc_temperature:
        return summary, None
    fit = fit_temperature(preds)
    summary["posthoc_temperature"] = fit
    return summary, fit["temperature"]


def recalibrate_run(run_dir: str | Path, progress: bool = True) -> dict:
    """Fit the post-hoc temperature of a finished run again on its validation split and
    rewrite the tempered metrics from its saved predictions (no training; the validation
    split is predicted again only when its predictions were not saved)."""
    from bslora_pyro.experiment.report import write_report
    from bslora_pyro.inference.temperature import temper

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    config.predict.posthoc_temperature = True
    metrics = rundir.read_metrics(run_dir)
    if not metrics:
        raise ConfigError(f"{run_dir} has no {rundir.METRICS}: is it a finished run?")
    path = run_dir / rundir.VALIDATION_PREDICTIONS
    if path.is_file():
        preds = rundir.read_predictions(path)
    else:
        _, validation = load_training_data(config)
        if not validation:
            raise ConfigError(f"{run_dir} was trained without data.validation_fraction")
        seed_everything(config.seed)
        preds = _predict(config, load_trained_method(run_dir, config), validation, progress)
        rundir.write_predictions(run_dir, "validation", [e.uid for e in validation], preds, path)
    summary, temperature = _validation_summary(config, preds)
    sets, reference = {}, None
    labels = [s.label for s in config.data.eval]  # in-distribution first, then the rest
    labels += [k for k in metrics if not k.startswith("_") and k not in labels]
    for label in labels:
        saved = run_dir / rundir.PREDICTIONS / f"{rundir.safe_name(label)}.jsonl"
        scaled = temper(rundir.read_predictions(saved), temperature)
        sets[label] = set_metrics(scaled, reference)
        if reference is None:
            reference = scaled
    metrics["_validation"] = summary
    metrics[rundir.TEMPERED] = {"temperature": temperature, "sets": sets}
    rundir.write_metrics(run_dir, metrics)
    write_report(run_dir)
    return metrics[rundir.TEMPERED]


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    progress: bool = True,
    scorer=None,
    resume: bool = False,
) -> dict:
    """Train ``config.method``, save it, evaluate every ``data.eval`` split, and write
    ``metrics.json``, predictions, the training log, plots and ``report.md``. ``resume``
    continues a killed run from its latest checkpoint; under a multi-process launch only the
    main process saves and evaluates (the others return ``{}``).

    A ``scorer`` built earlier may be passed to share its tokenizer and its cache of
    frozen-prefix hidden states between runs on the same backbone (see ``run_grid``).
    """
    from bslora_pyro.experiment.report import write_report
    from bslora_pyro.experiment.tracking import start_tracking
    from bslora_pyro.inference.distributed import is_main_process

    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.METRICS).unlink(missing_ok=True)  # only a finished run has metrics
    if not resume:  # a fresh run: nothing of an earlier one may be resumed or appended to
        for stale in (rundir.TRAIN_LOG, rundir.GATE_LOG):
            (run_dir / stale).unlink(missing_ok=True)
        for stale in (CHECKPOINT_DIR, rundir.EARLY_STOPPING):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    rundir.atomic_write_text(run_dir / rundir.CONFIG, yaml.safe_dump(config.to_dict(),
                                                                     sort_keys=False))
    seed_everything(config.seed)
    tracker = start_tracking(config, run_dir) if is_main_process() else None
    train_examples, validation = load_training_data(config)
    backbone, own_scorer = build_scorer_and_backbone(config)
    scorer = scorer or own_scorer
    method = build_method(config, backbone, scorer)
    started = time.perf_counter()
    stopped = train_method(config, method, train_examples, run_dir, progress, resume, validation,
                           tracker)
    train_seconds = time.perf_counter() - started
    if not is_main_process():
        return {}
    method.fit_posthoc(train_examples, scorer.encode)
    save_method(method, run_dir)
    validation_summary, temperature = validate_and_calibrate(config, method, validation, run_dir,
                                                             progress)
    results, tempered = evaluate_sets(config, method, config.data.eval, run_dir,
                                      progress=progress, temperature=temperature)
    results["_run"] = {"method": config.method, "seed": config.seed,
                       "train_seconds": round(train_seconds, 1),
                       "train_examples": len(train_examples),
                       "validation_examples": len(validation)}
    ranks = method.active_ranks()
    if ranks is not None:
        results["_run"]["expected_active_ranks"] = ranks
    if stopped:
        results["_run"]["early_stopping"] = stopped
    if validation_summary:
        results["_validation"] = validation_summary
    if tempered:
        results[rundir.TEMPERED] = {"temperature": temperature, "sets": tempered}
    rundir.write_metrics(run_dir, results)
    write_report(run_dir)
    if tracker is not None:
        tracker.log_metrics(results, step=config.train.steps)
        tracker.finish()
    return results


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


def evaluate_run(run_dir: str | Path, task: str, split: str | None = None,
                 limit: int | None = None, data_dir: str | None = None,
                 num_samples: int | None = None, progress: bool = True,
                 columns: list[str] | None = None) -> dict:
    """Evaluate a trained run on another set (a distribution shift) into its run dir:
    a built-in ``task`` (``split`` defaults to dev), or ``file:PATH`` / ``hub:ID`` with
    ``columns`` (``KEY=VALUE`` column mapping; see ``experiment.splits``)."""
    from bslora_pyro.experiment.report import write_report
    from bslora_pyro.experiment.splits import evaluation_split
    from bslora_pyro.experiment.tracking import start_tracking

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    target = evaluation_split(config, task, split, limit, columns or [])
    tracker = start_tracking(config, run_dir)
    if data_dir is not None:
        config.data.dir = data_dir
    if num_samples is not None:
        config.predict.num_samples = num_samples
    seed_everything(config.seed)
    method = load_trained_method(run_dir, config)
    reference_path = run_dir / rundir.PREDICTIONS / f"{rundir.safe_name(config.data.eval[0].label)}.jsonl"
    reference = rundir.read_predictions(reference_path) if reference_path.is_file() else None
    metrics = rundir.read_metrics(run_dir)
    temperature = metrics.get(rundir.TEMPERED, {}).get("temperature")
    results, tempered = evaluate_sets(config, method, [target], run_dir,
                                      reference=reference, progress=progress,
                                      temperature=temperature)
    metrics.update(results)
    if tempered:
        metrics[rundir.TEMPERED]["sets"].update(tempered)
    rundir.write_metrics(run_dir, metrics)
    write_report(run_dir)
    if tracker is not None:
        tracker.log_metrics(results, step=config.train.steps)
        tracker.finish()
    return results
