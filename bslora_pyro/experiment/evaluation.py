"""Evaluation of a trained method: metrics of one set (with OOD and selective-prediction
scores), every set of a run, the validation split and its post-hoc temperature, and a
finished run evaluated again (another set, or recalibrated)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from bslora_pyro import metrics as M
from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import (
    ConfigError,
    ExperimentConfig,
    PredictConfig,
    SplitConfig,
)
from bslora_pyro.experiment.report import write_report
from bslora_pyro.experiment.setup import (
    load_eval_set,
    load_split,
    load_trained_method,
    load_training_data,
    read_run_config,
    resolve_device,
    seed_everything,
)
from bslora_pyro.inference.predictive import Predictions
from bslora_pyro.typed import check_field

log = logging.getLogger("bslora_pyro")


def set_metrics(preds: Predictions, reference: Predictions | None = None) -> dict:
    """ACC / ECE / NLL / Brier and the area under the risk-coverage curve (a labelled set),
    mean predictive entropy and mutual information, and when a ``reference``
    (in-distribution) set is given, OOD detection of this set against it: AUROC and FPR at
    95 % TPR by predictive entropy and, for a predictive of several draws, by mutual
    information. An unlabelled set (an
    out-of-distribution set without answers) gets the uncertainty and OOD scores only."""
    probs = preds.probs.double().numpy()
    out: dict = {"n": int(preds.labels.shape[0])}
    if preds.labelled:
        labels = preds.labels.numpy()
        out.update(M.summarize(probs, labels, log_probs=preds.log_probs.double().numpy()))
        out["aurc"] = float(M.area_under_risk_coverage(probs, labels))
    out["num_samples"] = preds.num_samples
    entropy = M.predictive_entropy(probs)
    mutual = M.mutual_information(preds.sample_probs.double().numpy())
    out["mean_entropy"] = float(entropy.mean())
    out["mean_mutual_information"] = float(mutual.mean())
    if reference is not None:
        ent_in = M.predictive_entropy(reference.probs.double().numpy())
        mi_in = M.mutual_information(reference.sample_probs.double().numpy())
        out["ood_auroc_entropy"] = float(M.auroc(ent_in, entropy))
        out["ood_fpr95_entropy"] = M.fpr_at_tpr(ent_in, entropy)
        if preds.num_samples > 1:  # one draw has MI 0 everywhere: it ranks nothing
            out["ood_auroc_mi"] = float(M.auroc(mi_in, mutual))
            out["ood_fpr95_mi"] = M.fpr_at_tpr(mi_in, mutual)
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in out.items()}


def predict_split(config: ExperimentConfig, method, examples: list, progress: bool,
                  deterministic: bool = False):
    """The config's predictive on ``examples``; ``deterministic``: one forward at the
    posterior mean instead of ``predict.num_samples`` draws."""
    from bslora_pyro.inference.predictive import predict

    return predict(method, examples, method.scorer.encode,
                   num_samples=1 if deterministic else config.predict.num_samples,
                   batch_size=config.predict.batch_size, deterministic=deterministic,
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
    loaded: list[list] | None = None,
) -> tuple[dict, dict]:
    """Predict each split, write its predictions file, and return its metrics; with a
    ``temperature``, also the metrics of the tempered predictive (else ``{}``).
    ``loaded``: each split's examples, read already (else they are read here)."""
    from bslora_pyro.inference.temperature import temper

    results, tempered = {}, {}
    tempered_reference = None
    if reference is not None and temperature is not None:
        tempered_reference = temper(reference, temperature)
    for index, split in enumerate(splits):
        examples = load_split(split, config.data.dir) if loaded is None else loaded[index]
        started = time.perf_counter()
        preds = predict_split(config, method, examples, progress)
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
    preds = predict_split(config, method, validation, progress)
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
            raise ConfigError(f"{run_dir} was trained without a validation split "
                              "(data.validation_fraction or data.validation)")
        seed_everything(config.seed)
        preds = predict_split(config, load_trained_method(run_dir, config), validation, progress)
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


def evaluate_run(run_dir: str | Path, task: str, split: str | None = None,
                 limit: int | None = None, data_dir: str | None = None,
                 num_samples: int | None = None, progress: bool = True,
                 columns: list[str] | None = None) -> dict:
    """Evaluate a trained run on another set (a distribution shift) into its run dir:
    a built-in ``task`` (``split`` defaults to dev), or ``file:PATH`` / ``hub:ID`` with
    ``columns`` (``KEY=VALUE`` column mapping; see ``experiment.splits``)."""
    from bslora_pyro.experiment.splits import evaluation_split
    from bslora_pyro.experiment.tracking import start_tracking

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if num_samples is not None:  # the flag is checked as the config key is
        config.predict.num_samples = check_field(PredictConfig, "num_samples", num_samples,
                                                 "--num-samples (predict.num_samples)")
    target = evaluation_split(config, task, split, limit, columns or [])
    if data_dir is not None:
        config.data.dir = data_dir
    # every row is read and checked before the backbone loads or anything is written
    examples = load_eval_set(target, config.data.dir, "--task")
    tracker = start_tracking(config, run_dir)
    seed_everything(config.seed)
    method = load_trained_method(run_dir, config)
    reference_path = run_dir / rundir.PREDICTIONS / f"{rundir.safe_name(config.data.eval[0].label)}.jsonl"
    reference = rundir.read_predictions(reference_path) if reference_path.is_file() else None
    metrics = rundir.read_metrics(run_dir)
    temperature = metrics.get(rundir.TEMPERED, {}).get("temperature")
    results, tempered = evaluate_sets(config, method, [target], run_dir,
                                      reference=reference, progress=progress,
                                      temperature=temperature, loaded=[examples])
    metrics.update(results)
    if tempered:
        metrics[rundir.TEMPERED]["sets"].update(tempered)
    publish_metrics(run_dir, metrics, tracker, results, config.train.steps)
    return results


def publish_metrics(run_dir: Path, metrics: dict, tracker, logged: dict, step: int) -> None:
    """Write the run's ``metrics.json`` and report; send ``logged`` to the ``tracker`` (if
    any) at ``step`` and close it."""
    rundir.write_metrics(run_dir, metrics)
    write_report(run_dir)
    if tracker is not None:
        tracker.log_metrics(logged, step=step)
        tracker.finish()
