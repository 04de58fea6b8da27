"""Trackers through accelerate: TensorBoard event files read back, and one-line errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tiny_run import CONFIG, error_line, save_tiny_model, write_arc

from bslora_pyro.cli import main
from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, load_config
from bslora_pyro.inference.svi import linear_schedule

pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    model = save_tiny_model(tmp / "model")
    data = write_arc(tmp / "data", n=12)
    out = tmp / "run"
    assert main(["train", str(CONFIG), "--out", str(out), "--data-dir", str(data), "--quiet",
                 "--set", f"model.name={model}", "--set", "tracking.log_with=tensorboard"]) == 0
    return out


def scalars(folder) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def test_training_curves_match_the_train_log(tracked_run):
    curves = scalars(tracked_run / "tracking")
    log = rundir.read_jsonl(tracked_run / rundir.TRAIN_LOG)
    for key in ("loss", "nll", "kl", "active_ranks", "tau"):
        points = curves[f"train/{key}"]
        assert [p.step for p in points] == [r["step"] for r in log] == [1, 2, 3, 4]
        assert [p.value for p in points] == pytest.approx([r[key] for r in log], rel=1e-6)


def test_learning_rates_are_those_each_step_used(tracked_run):
    curves = scalars(tracked_run / "tracking")
    config = load_config(tracked_run / rundir.CONFIG)
    factor = linear_schedule(config.train.steps, config.train.warmup_ratio)
    for group, base in (("factors", config.train.lr_factors), ("gates", config.train.lr_gates)):
        values = [p.value for p in curves[f"train/lr_{group}"]]
        assert values == pytest.approx([base * factor(s) for s in range(4)], rel=1e-6)


def test_evaluation_metrics_are_logged_at_the_last_step(tracked_run):
    curves = scalars(tracked_run / "tracking")
    metrics = json.loads((tracked_run / rundir.METRICS).read_text())
    sets = (("arc_easy:dev", "arc_easy_dev"), ("arc_challenge:dev", "arc_challenge_dev"))
    for label, tag in sets:
        for key in ("acc", "ece", "nll", "brier"):
            (point,) = curves[f"eval/{tag}/{key}"]
            assert point.step == 4
            assert point.value == pytest.approx(metrics[label][key], rel=1e-6)
    assert "eval/arc_challenge_dev/ood_auroc_mi" in curves


def test_unknown_tracker_names_the_key():
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord' .did you mean tensorboard"):
        load_config(CONFIG, ["tracking.log_with=tensorbord"])
    with pytest.raises(ConfigError, match="init_kwargs.wandb must be a mapping for a tracker"):
        load_config(CONFIG, ["tracking.log_with=tensorboard", "tracking.init_kwargs.wandb.x=1"])


def test_missing_tracker_package_stops_before_training(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", str(CONFIG), "--out", str(out), "--quiet",
                 "--set", "tracking.log_with=[tensorboard, wandb]"]) == 2
    assert "tracking.log_with: wandb needs the wandb package" in error_line(capsys.readouterr().err)
    assert not (out / rundir.TRAIN_LOG).exists()
