"""Train a method from a config, evaluate it, and fill a run directory."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, ExperimentConfig
from bslora_pyro.experiment.evaluation import (
    evaluate_sets,
    publish_metrics,
    validate_and_calibrate,
)
from bslora_pyro.experiment.setup import (
    build_method,
    build_scorer_and_backbone,
    load_eval_data,
    load_training_data,
    resolve_device,
    seed_everything,
)
from bslora_pyro.inference.checkpoint import CHECKPOINT_DIR


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
        on_step = _log_step(run_dir, config, method, tracker)
        if not config.train.validate_every:
            method.fit(train_examples, method.scorer.encode, config.train, progress=progress,
                       on_step=on_step)
            return {}
        if not getattr(method, "validates_members", False):
            raise ConfigError(f"train.validate_every is not supported for method "
                              f"{config.method!r} (it trains on its own split)")

        def monitor(member, index: int):
            folder = run_dir / rundir.EARLY_STOPPING / f"member{index}"
            return _validation_monitor(config, member, validation or [], folder)

        return method.fit(train_examples, method.scorer.encode, config.train, progress=progress,
                          on_step=on_step, monitor=monitor) or {}
    return _train_with_checkpoints(config, method, train_examples, run_dir, progress, resume,
                                   validation or [], tracker)


def _validation_monitor(config: ExperimentConfig, method, validation: list, folder: Path):
    """The ``on_step`` hook scoring ``validation`` with ``method``'s predictive (the best
    validated state is kept in ``folder``)."""
    from bslora_pyro.inference.early_stopping import ValidationMonitor
    from bslora_pyro.inference.predictive import predict
    from bslora_pyro.metrics import nll_from_log_probs

    device = resolve_device(config.model.device)

    def validation_nll() -> float:
        preds = predict(method, validation, method.scorer.encode,
                        num_samples=config.predict.num_samples,
                        batch_size=config.predict.batch_size, device=device, progress=False,
                        seed=config.seed)
        return nll_from_log_probs(preds.log_probs, preds.labels)

    train = config.train
    return ValidationMonitor(validation_nll, train.validate_every, train.early_stopping,
                             train.patience, folder)


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
        monitor = _validation_monitor(config, method, validation,
                                      run_dir / rundir.EARLY_STOPPING)
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
    from bslora_pyro.experiment.tracking import start_tracking
    from bslora_pyro.inference.distributed import is_main_process

    run_started = time.perf_counter()
    # every data file is read and checked before anything is written or the backbone loads
    train_examples, validation = load_training_data(config)
    eval_examples = load_eval_data(config)
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
    rundir.write_gate_posterior(run_dir, method)
    validation_summary, temperature = validate_and_calibrate(config, method, validation, run_dir,
                                                             progress)
    results, tempered = evaluate_sets(config, method, config.data.eval, run_dir,
                                      progress=progress, temperature=temperature,
                                      loaded=eval_examples)
    results["_run"] = {"method": config.method, "seed": config.seed,
                       "train_seconds": round(train_seconds, 1),
                       "train_examples": len(train_examples),
                       "validation_examples": len(validation)}
    clipped = [r["clipped"] for r in rundir.read_jsonl(run_dir / rundir.TRAIN_LOG)
               if "clipped" in r]
    if clipped:  # how often gradient clipping acted (train.grad_clip, per-example scale)
        results["_run"]["clipped_share"] = round(sum(clipped) / len(clipped), 4)
    ranks = method.active_ranks()
    if ranks is not None:
        results["_run"]["expected_active_ranks"] = ranks
    if stopped:
        results["_run"]["early_stopping"] = stopped
    if validation_summary:
        results["_validation"] = validation_summary
    if tempered:
        results[rundir.TEMPERED] = {"temperature": temperature, "sets": tempered}
    # loading, training, validation and every evaluation set: what the run cost end to end
    results["_run"]["run_seconds"] = round(time.perf_counter() - run_started, 1)
    publish_metrics(run_dir, results, tracker, results, config.train.steps)
    return results
