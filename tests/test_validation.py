"""The validation split, early stopping on it, and post-hoc temperatures fitted on it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_questions
from tiny_run import CONFIG, arc_row, save_tiny_model, write_arc

from bslora_pyro import metrics as M
from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.cli import main
from bslora_pyro.data.validation import split_validation
from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, load_config
from bslora_pyro.experiment.setup import load_training_data
from bslora_pyro.inference.early_stopping import ValidationMonitor
from bslora_pyro.inference.predictive import Predictions
from bslora_pyro.inference.svi import SVITrainer, TrainConfig
from bslora_pyro.inference.temperature import fit_temperature, temper
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_llama, tiny_tokenizer


def test_validation_split_is_seeded_disjoint_and_complete():
    examples = make_questions(40)
    train, validation = split_validation(examples, 0.25, seed=3)
    assert len(validation) == 10 and len(train) == 30
    uids = lambda part: {ex.uid for ex in part}  # noqa: E731
    assert uids(train).isdisjoint(uids(validation))
    assert uids(train) | uids(validation) == uids(examples)
    assert split_validation(examples, 0.25, seed=3) == (train, validation)
    assert split_validation(examples, 0.25, seed=4)[1] != validation
    order = [ex.uid for ex in examples]
    assert [ex.uid for ex in train] == [u for u in order if u in uids(train)]  # order kept


def test_runner_holds_out_validation_and_refuses_evaluating_on_the_training_split(tmp_path):
    data = write_arc(tmp_path / "data", n=20)
    config = load_config(CONFIG, ["data.validation_fraction=0.25", "data.train.limit=null"],
                         str(data))
    train, validation = load_training_data(config)
    assert len(train) == 15 and len(validation) == 5
    assert {ex.uid for ex in train}.isdisjoint({ex.uid for ex in validation})
    leaky = load_config(CONFIG, ["data.eval=[{task: arc_easy, split: train}]"], str(data))
    with pytest.raises(ConfigError, match="arc_easy:train is the training split"):
        load_training_data(leaky)


def test_a_validation_set_of_its_own(tmp_path):
    """data.validation: the same questions whatever the training set's size; never the
    training or an evaluation split."""
    data = write_arc(tmp_path / "data", n=20)
    own = ["data.validation={task: arc_challenge, split: dev, limit: 6}",
           "data.eval=[{task: arc_easy, split: dev}]"]
    config = load_config(CONFIG, own, str(data))
    train, validation = load_training_data(config)
    assert len(train) == 16 and len(validation) == 6
    assert load_config(CONFIG, [*own, "train.validate_every=2"], str(data)).data.has_validation
    with pytest.raises(ConfigError, match="not both"):
        load_config(CONFIG, [*own, "data.validation_fraction=0.2"])
    leaky = load_config(CONFIG, ["data.validation={task: arc_easy, split: train}"], str(data))
    with pytest.raises(ConfigError, match="data.validation arc_easy:train is the training split"):
        load_training_data(leaky)
    evaluated = load_config(CONFIG, ["data.validation={task: arc_easy, split: dev}"], str(data))
    with pytest.raises(ConfigError, match="arc_easy:dev is the validation split"):
        load_training_data(evaluated)


@pytest.mark.parametrize(("override", "message"), [
    ("predict.posthoc_temperature=true", "predict.posthoc_temperature needs a validation split"),
    ("train.validate_every=2", "train.validate_every needs a validation split"),
    ("train.early_stopping=true", "train.early_stopping needs train.validate_every"),
    ("data.validation_fraction=1.0", "data.validation_fraction must be in"),
    ("predict.num_samples=0", "predict.num_samples must be a positive integer"),
])
def test_settings_that_need_a_validation_split_are_checked_up_front(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [override])


def _trainer(steps: int = 6) -> SVITrainer:
    torch.manual_seed(0)
    method = BayesianLora(tiny_llama(seed=0), ChoiceScorer(tiny_tokenizer(), "choice_loglik"),
                          AdapterConfig(r=2, alpha=4.0, target_modules=["q_proj", "v_proj"]))
    config = TrainConfig(steps=steps, batch_size=4, lr_factors=5e-2, lr_gates=5e-2)
    return SVITrainer(method, method.scorer.encode, config)


def _snapshot(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.parameters()]


@pytest.mark.parametrize("patience", [0, 1])
def test_early_stopping_restores_the_best_steps_weights(patience, tmp_path):
    examples = make_questions(8)
    trainer = _trainer()
    scores = iter([3.0, 1.0, 2.0])  # validations at steps 2, 4, 6: step 4 is best
    snapshots = {}

    def validate() -> float:
        snapshots[trainer.step] = _snapshot(trainer)
        torch.rand(100)  # the monitor forks the RNG: this must not change training draws
        return next(scores)

    monitor = ValidationMonitor(validate, every=2, early_stopping=True, patience=patience,
                                folder=tmp_path)
    trainer.fit(examples, progress=False, on_step=monitor)
    assert trainer.step == 6  # with patience 1 the stop comes after the last step anyway
    last = _snapshot(trainer)
    summary = monitor.restore_best(trainer)
    assert summary == {"best_step": 4, "best_val_nll": 1.0, "steps_trained": 6}
    for got, best in zip(_snapshot(trainer), snapshots[4], strict=True):
        assert torch.equal(got, best)
    assert any(not torch.equal(a, b) for a, b in zip(last, snapshots[4], strict=True))
    assert [r.get("val_nll") for r in trainer.history] == [None, 3.0, None, 1.0, None, 2.0]
    # the persisted best state is what a resumed run restores
    resumed = ValidationMonitor(validate, every=2, early_stopping=True, folder=tmp_path)
    resumed.load(trainer)
    assert resumed.best_step == 4 and resumed.since_best == 1
    for got, best in zip(resumed.best_state, snapshots[4], strict=True):
        assert torch.equal(got, best)


def test_patience_stops_training_and_validation_does_not_change_the_training_draws():
    examples = make_questions(8)
    plain = _trainer(steps=8)
    plain.fit(examples, progress=False)
    trainer = _trainer(steps=8)
    scores = iter([1.0, 2.0, 3.0, 4.0])
    monitor = ValidationMonitor(lambda: (torch.rand(50), next(scores))[1], every=2,
                                early_stopping=True, patience=2)
    trainer.fit(examples, progress=False, on_step=monitor)
    assert trainer.step == 6  # validations at 2 (best), 4, 6: two without a new best
    assert [r["loss"] for r in trainer.history] == [r["loss"] for r in plain.history[:6]]


def _preds(logits: torch.Tensor, labels: torch.Tensor) -> Predictions:
    mask = torch.ones(logits.shape[1:], dtype=bool)
    return Predictions.from_sample_log_probs(torch.log_softmax(logits, -1), labels, mask)


def test_temper_divides_every_draws_logits_then_averages():
    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(4, 20, 3), torch.randint(3, (20,))
    preds = _preds(logits, labels)
    scaled = temper(preds, 2.5)
    torch.testing.assert_close(scaled.sample_probs, torch.softmax(logits / 2.5, -1))
    torch.testing.assert_close(scaled.probs, torch.softmax(logits / 2.5, -1).mean(0))
    torch.testing.assert_close(temper(preds, 1.0).probs, preds.probs)
    mask = torch.ones(20, 3, dtype=bool)
    mask[:, 2] = False
    masked = _preds(logits.masked_fill(~mask, -torch.inf), labels)
    masked.choice_mask = mask
    assert torch.all(temper(masked, 0.5).sample_probs[..., 2] == 0)


def test_fitted_temperature_minimises_the_validation_nll():
    torch.manual_seed(1)
    labels = torch.randint(3, (200,))
    logits = 6 * torch.randn(2, 200, 3)  # badly overconfident: T well above 1
    preds = _preds(logits, labels)
    fit = fit_temperature(preds)
    assert fit["temperature"] > 1.5 and fit["validation_nll_after"] < fit["validation_nll_before"]
    nll = lambda t: M.negative_log_likelihood(temper(preds, t).probs, labels)  # noqa: E731
    best = nll(fit["temperature"])
    assert best == pytest.approx(fit["validation_nll_after"], rel=1e-6)
    assert best <= min(nll(fit["temperature"] * f) for f in (0.9, 1.1))


def test_fitted_temperature_with_missing_choices_is_finite_and_keeps_them_at_zero():
    """Questions with fewer choices than the batch's widest (ARC has 3-5) pad with
    probability 0: the fit must neither give NaN gradients nor move mass onto them."""
    torch.manual_seed(2)
    labels = torch.randint(3, (120,))
    mask = torch.ones(120, 4, dtype=bool)
    mask[::2, 3] = False  # every other question has 3 choices
    preds = _preds((6 * torch.randn(3, 120, 4)).masked_fill(~mask, -torch.inf), labels)
    preds.choice_mask = mask
    fit = fit_temperature(preds)
    assert fit["temperature"] > 1.5 and fit["validation_nll_after"] < fit["validation_nll_before"]
    assert torch.all(temper(preds, fit["temperature"]).sample_probs[:, ::2, 3] == 0)


def _write_shuffled_eval(data, n: int, shift: int) -> None:
    """ARC-Easy dev whose answer keys are rotated by ``shift`` (other labels, same text)."""
    rows = []
    for i in range(n):
        row = arc_row(i)
        row["answerKey"] = "ABC"[("ABC".index(row["answerKey"]) + shift) % 3]
        rows.append(json.dumps(row))
    write_arc(data, n=n, rows={"easy_dev": rows})


def test_posthoc_temperature_is_fitted_on_the_validation_split_only(tmp_path):
    """Two runs that differ only in the evaluation labels must fit the same temperature:
    fitting on (or leaking) evaluation data would change it."""
    model = save_tiny_model(tmp_path / "model")
    temperatures, runs = [], []
    for shift in (0, 1):
        data = tmp_path / f"data{shift}"
        _write_shuffled_eval(data, 24, shift)
        run = tmp_path / f"run{shift}"
        assert main(["train", str(CONFIG), "--out", str(run), "--quiet", "--data-dir", str(data),
                     "--set", f"model.name={model}", "--set", "data.train.limit=null",
                     "--set", "data.validation_fraction=0.25", "--set", "train.steps=6",
                     "--set", "train.lr_factors=0.05",
                     "--set", "predict.posthoc_temperature=true"]) == 0
        metrics = rundir.read_metrics(run)
        temperatures.append(metrics[rundir.TEMPERED]["temperature"])
        runs.append((run, metrics))
    assert temperatures[0] == temperatures[1] != 1.0
    (run, metrics), (_, other) = runs
    fit = metrics["_validation"]["posthoc_temperature"]
    assert fit["validation_size"] == 6 and metrics["_run"]["train_examples"] == 18
    assert metrics["arc_easy:dev"]["acc"] != other["arc_easy:dev"]["acc"]  # labels did differ
    # the tempered metrics are the saved predictions under the saved temperature
    preds = rundir.read_predictions(run / rundir.PREDICTIONS / "arc_easy__dev.jsonl")
    tempered = temper(preds, temperatures[0])
    expected = M.summarize(tempered.probs.numpy(), tempered.labels.numpy())
    got = metrics[rundir.TEMPERED]["sets"]["arc_easy:dev"]
    for key in ("acc", "ece", "nll", "brier"):
        assert got[key] == pytest.approx(expected[key], abs=1e-4)
    assert "post-hoc temperature" in (run / rundir.REPORT).read_text()
    # `bslora calibrate` fits it again from the saved validation predictions
    assert (run / rundir.VALIDATION_PREDICTIONS).is_file()
    saved = dict(metrics)
    metrics.pop(rundir.TEMPERED)
    rundir.write_metrics(run, metrics)
    assert main(["calibrate", str(run), "--quiet"]) == 0
    again = rundir.read_metrics(run)
    assert again[rundir.TEMPERED]["temperature"] == pytest.approx(temperatures[0], rel=1e-9)
    for label, values in saved[rundir.TEMPERED]["sets"].items():
        assert again[rundir.TEMPERED]["sets"][label] == pytest.approx(values, rel=1e-6), label


def test_grid_with_early_stopping_and_temperature_rows(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = write_arc(tmp_path / "data", n=24)
    out = tmp_path / "runs"
    assert main(["grid", str(CONFIG), "--out", str(out), "--methods", "mle,bslora", "--quiet",
                 "--data-dir", str(data), "--set", f"model.name={model}",
                 "--set", "data.train.limit=null", "--set", "data.validation_fraction=0.25",
                 "--set", "train.steps=6", "--set", "train.validate_every=2",
                 "--set", "train.early_stopping=true",
                 "--set", "predict.posthoc_temperature=true"]) == 0
    metrics = rundir.read_metrics(out / "bslora" / "seed0")
    stop = metrics["_run"]["early_stopping"]
    assert stop["best_step"] in (2, 4, 6) and stop["steps_trained"] == 6
    log = rundir.read_jsonl(out / "bslora" / "seed0" / rundir.TRAIN_LOG)
    validated = {r["step"]: r["val_nll"] for r in log if "val_nll" in r}
    assert sorted(validated) == [2, 4, 6]
    assert stop["best_val_nll"] == min(validated.values())
    rows = [line.split(" | ")[0] for line in (out / "comparison.md").read_text().splitlines()[2:]]
    assert rows == ["| tiny/mle", "| tiny/mle + T", "| tiny/bslora", "| tiny/bslora + T"]


def test_ensemble_early_stops_each_member_on_its_own(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = write_arc(tmp_path / "data", n=24)
    run = tmp_path / "run"
    assert main(["train", str(CONFIG), "--out", str(run), "--quiet", "--data-dir", str(data),
                 "--set", f"model.name={model}", "--set", "method=ensemble",
                 "--set", "method_options={members: 2}", "--set", "data.train.limit=null",
                 "--set", "data.validation_fraction=0.25", "--set", "train.steps=6",
                 "--set", "train.validate_every=2", "--set", "train.early_stopping=true"]) == 0
    stops = rundir.read_metrics(run)["_run"]["early_stopping"]["members"]
    log = rundir.read_jsonl(run / rundir.TRAIN_LOG)
    assert len(stops) == 2
    for k, stop in enumerate(stops):
        validated = {r["step"]: r["val_nll"] for r in log if r["member"] == k and "val_nll" in r}
        assert sorted(validated) == [2, 4, 6] and stop["steps_trained"] == 6
        assert stop["best_val_nll"] == min(validated.values())
        assert validated[stop["best_step"]] == stop["best_val_nll"]
    assert "early stopping: member 1: weights of step" in (run / rundir.REPORT).read_text()
