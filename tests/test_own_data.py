"""Your own data from the config and the CLI: the mapping keys, and end to end on a tiny
model with the shipped JSON Lines and CSV files (experiments/configs/own_data.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_run import error_line, save_tiny_model

from bslora_pyro.cli import main
from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
OWN = ROOT / "experiments" / "configs" / "own_data.yaml"
TINY = ["--quiet", "--set", "train.steps=4", "--set", "train.batch_size=4",
        "--set", 'adapter.layers="-1:"', "--set", "adapter.r=4",
        "--set", "predict.num_samples=2", "--set", "model.max_length=64"]
GEO_COLUMNS = ["--column", "question=Question",
               "--column", "choices=[Option A, Option B, Option C, Option D]",
               "--column", "answer=Key", "--column", "answer_type=letter", "--column", "id=null"]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    model = save_tiny_model(tmp / "model")
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the config's data paths are relative to the repository root
        assert main(["train", str(OWN), "--out", str(out), *TINY,
                     "--set", f"model.name={model}"]) == 0
    return out


def test_jsonl_and_csv_sets_train_and_evaluate(own_run):
    metrics = rundir.read_metrics(own_run)
    dev, geo = metrics["science_dev"], metrics["geography"]
    assert dev["n"] == 12 and geo["n"] == 16
    assert "ood_auroc_entropy" in geo and "ood_auroc_entropy" not in dev
    assert metrics["_run"]["train_examples"] == 32
    preds = own_run / "predictions" / "science_dev.jsonl"
    uids = [json.loads(line)["uid"] for line in preds.read_text().splitlines()]
    assert uids[0] == "science_dev/dev-001" and len(uids) == 12
    assert len((own_run / rundir.TRAIN_LOG).read_text().splitlines()) == 4
    assert not (own_run / "tracking").exists()  # trackers are off by default


def test_evaluate_a_csv_file_with_its_own_columns(own_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = rundir.read_metrics(own_run)
    assert main(["evaluate", str(own_run), "--task", "file:experiments/data/geography.csv",
                 *GEO_COLUMNS, "--column", "name=geo_first5", "--limit", "5", "--quiet",
                 "--num-samples", "2"]) == 0
    after = rundir.read_metrics(own_run)
    assert after["geo_first5"]["n"] == 5 and after["geo_first5"]["num_samples"] == 2
    assert after["geography"] == before["geography"]
    assert (own_run / "predictions" / "geo_first5.jsonl").is_file()


def test_evaluate_a_file_with_the_training_sets_mapping(own_run, tmp_path):
    copy = shutil.copy(ROOT / "experiments" / "data" / "science_dev.jsonl", tmp_path / "more.jsonl")
    assert main(["evaluate", str(own_run), "--task", f"file:{copy}", "--quiet"]) == 0
    assert rundir.read_metrics(own_run)["more"]["n"] == 12


@pytest.mark.parametrize(("args", "needle"), [
    (["--task", "arc_easy", "--column", "question=q"], "--column applies to --task file:"),
    (["--task", "file:x.csv", "--column", "colour=red"], "--column colour: not a column mapping"),
    (["--task", "file:x.csv", "--column", "question"], "--column expects KEY=VALUE"),
    (["--task", "file:x.csv", "--split", "dev"], "--split applies to built-in tasks and hub:"),
    (["--task", "file:"], "give a path after file:"),
    (["--task", "file:nothing.csv"], "missing data file nothing.csv"),
])
def test_evaluate_errors_are_one_line(own_run, capsys, args, needle):
    assert main(["evaluate", str(own_run), "--quiet", *args]) == 2
    assert needle in error_line(capsys.readouterr().err, "evaluate")


def write_config(tmp_path: Path, train: str, eval_set: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"name: mine\nmodel: {{name: unused}}\ndata:\n  train: {train}\n"
                    f"  eval:\n    - {eval_set}\n")
    return path


def test_a_malformed_training_file_stops_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "Which?", "ch": ["a", "b"], "ans": 0}\n{"q": oops}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"q": "Which?", "ch": ["a", "b"], "ans": 1}\n')
    mapping = "question: q, choices: ch, answer: ans"
    config = write_config(tmp_path, f"{{path: {bad}, {mapping}}}", f"{{path: {good}, {mapping}}}")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "bad.jsonl, line 2: invalid JSON" in error_line(capsys.readouterr().err)


def test_evaluating_on_the_training_file_is_refused(tmp_path, capsys):
    data = shutil.copy(ROOT / "experiments" / "data" / "science_dev.jsonl", tmp_path / "d.jsonl")
    mapping = "question: prompt, choices: options, answer: correct, answer_type: text"
    config = write_config(tmp_path, f"{{path: {data}, {mapping}}}",
                          f"{{path: {data}, {mapping}, name: same}}")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "data.eval same is the training split" in error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- config


def config_error(tmp_path, split: str, *needles: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"data:\n  train: {split}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("split", "needles"), [
    ("{path: a.jsonl, question: q}", ["data.train: path 'a.jsonl' needs the column mapping",
                                      "choices, answer"]),
    ("{task: arc_easy, split: train, path: a.jsonl, question: q, choices: c, answer: a}",
     ["data.train: give either task"]),
    ("{task: arc_easy, split: train, question: q}", ["data.train: question needs path"]),
    ("{path: a.txt, question: q, choices: c, answer: a}", ["cannot tell the format of 'a.txt'"]),
    ("{path: a.csv, question: q, choices: c, answer: a, answer_type: key}",
     ["answer_type must be one of index, letter, text"]),
    ("{path: org/set, format: hub, question: q, choices: c, answer: a}", ["needs a split"]),
    ("{path: a.csv, split: dev, question: q, choices: c, answer: a}",
     ["split and hub_config apply to format hub only"]),
    ("{path: a.csv, question: q, choices: [c], answer: a}", ["choices lists 1 column(s)"]),
    ("{path: a.csv, question: q, choices: c, answer: a, prompt: 'Q {0}'}", ["prompt template"]),
    ("{path: a.csv, question: q, chioces: c, answer: a}", ["did you mean data.train.choices?"]),
])
def test_bad_mapping_names_the_key(tmp_path, split, needles):
    config_error(tmp_path, split, *needles)


def test_two_eval_sets_with_one_label(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  eval:\n"
                    "    - {path: a/dev.jsonl, question: q, choices: c, answer: a}\n"
                    "    - {path: b/dev.jsonl, question: q, choices: c, answer: a}\n")
    with pytest.raises(ConfigError, match="two sets are labelled 'dev'; set name on one"):
        load_config(path)


def test_saved_config_leaves_out_the_keys_a_built_in_run_does_not_use():
    config = load_config(ROOT / "experiments" / "configs" / "tiny.yaml")
    data = config.to_dict()
    assert "tracking" not in data
    assert data["data"]["train"] == {"task": "arc_easy", "split": "train", "limit": 16}
    custom = load_config(ROOT / "experiments" / "configs" / "own_data.yaml",
                         ["tracking.log_with=tensorboard"]).to_dict()
    assert custom["tracking"]["log_with"] == "tensorboard"
    assert custom["data"]["eval"][1]["answer_type"] == "letter"
