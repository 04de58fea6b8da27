"""Wrong inputs through the CLI: exit code 2 and one line that names the problem."""

from __future__ import annotations

import json

import pytest
from tiny_run import CONFIG, arc_row, error_line, save_tiny_model, write_arc

from bslora_pyro.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.delenv("BSLORA_DATA_DIR", raising=False)


def train(tmp_path, model_dir, *sets: str, data=None, config=CONFIG, extra=()) -> list[str]:
    data = data or write_arc(tmp_path / "data", n=8)
    args = ["train", str(config), "--out", str(tmp_path / "run"), "--data-dir", str(data),
            "--quiet", "--set", f"model.name={model_dir}", "--set", "train.steps=1"]
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


def fails(args: list[str], capsys, *needles: str, command: str = "train") -> str:
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, command)
    for needle in needles:
        assert needle in line, line
    return line


GOOD_ROW = json.dumps(arc_row(0))


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.stpes=3", ["unknown config key train.stpes", "did you mean train.steps"]),
        ("modle.name=x", ["unknown config key modle"]),
        ("adapter.rank=4", ["unknown config key adapter.rank"]),
        ("adapter.r=0", ["adapter.r must be a positive integer, got 0"]),
        ("adapter.r=-2", ["adapter.r must be a positive integer"]),
        ("train.batch_size=0", ["train.batch_size must be a positive integer"]),
        ("train.steps=ten", ["train.steps: expected int, got 'ten'"]),
        ("train.mixed_precision=fp8", ["train.mixed_precision must be no, bf16 or fp16"]),
        ("model.quantization=3bit", ["model.quantization must be null, 4bit or 8bit"]),
        ("model.scoring=choice_mean", ["model.scoring must be one of", "choice_loglik_mean"]),
        ("adapter.target_modules=[nope]", ["target_modules", "matches no module"]),
        ("method_options.prior_kwargs.p0=1.5",
         ["method_options.prior_kwargs.p0 must be in (0, 1), got 1.5"]),
        ("method_options.prior_kwargs.p0=0", ["prior_kwargs.p0 must be in (0, 1)"]),
        ("method_options.guide.temprature=0.3", ["method_options", "temprature"]),
        ("method_options.prior_kwargs.p1=0.3", ["method_options", "p1"]),
        ("method=bayes", ["unknown method 'bayes'"]),
        ("data.eval=[{task: arc_medium, split: dev}]", ["unknown task 'arc_medium'"]),
        ("data.eval=[{task: arc_easy, split: validation_x}]", ["has no split 'validation_x'"]),
        ("data.train.limit=0", ["data.train.limit must be a positive integer, got 0"]),
        ("data.eval=[{task: arc_easy, split: dev, limit: 0}]", ["data.eval[0].limit must be a"]),
    ],
)
def test_bad_config_values(tmp_path, model_dir, capsys, override, needles):
    fails(train(tmp_path, model_dir, override), capsys, *needles)


def test_missing_model(tmp_path, model_dir, capsys):
    fails(train(tmp_path, model_dir, f"model.name={tmp_path / 'no-such-model'}"), capsys,
          "no model folder at", "no-such-model")
    fails(train(tmp_path, model_dir, "model.name=nobody/no-such-model"), capsys,
          "could not load causal_lm backbone 'nobody/no-such-model'")


def test_quantized_base_needs_cuda_and_bitsandbytes(tmp_path, model_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(train(tmp_path, model_dir, "model.quantization=4bit"), capsys,
          "model.quantization=4bit needs a CUDA GPU and the bitsandbytes package")


@pytest.mark.parametrize(
    ("rows", "needles"),
    [
        ({"easy_train": [GOOD_ROW, "{not json"]}, ["ARC-Easy-Train.jsonl, line 2", "invalid JSON"]),
        ({"easy_train": [GOOD_ROW, "[1, 2]"]}, ["line 2", "expected a JSON object"]),
        ({"easy_train": [json.dumps(arc_row(1, answer="E"))]},
         ["line 1", "answer key 'E' is not among the choice labels"]),
        ({"easy_train": [json.dumps({"id": "q", "question": {"stem": "s"}, "answerKey": "A"})]},
         ["line 1", "missing field 'choices'"]),
        ({"easy_train": []}, ["ARC-Easy-Train.jsonl is empty"]),
        ({"challenge_dev": [json.dumps(arc_row(2, answer="Z"))]},
         ["ARC-Challenge-Dev.jsonl", "answer key 'Z'"]),
    ],
)
def test_bad_data_files(tmp_path, model_dir, capsys, rows, needles):
    data = write_arc(tmp_path / "data", n=8, rows=rows)
    fails(train(tmp_path, model_dir, data=data), capsys, *needles)


def test_missing_data_file_and_folder(tmp_path, model_dir, capsys):
    data = write_arc(tmp_path / "data", n=8)
    (data / "arc" / "ARC-Challenge" / "ARC-Challenge-Dev.jsonl").unlink()
    fails(train(tmp_path, model_dir, data=data), capsys, "missing file",
          "ARC-Challenge-Dev.jsonl", "expected layout for arc_challenge")
    fails(train(tmp_path, model_dir, data=tmp_path / "nowhere"), capsys,
          "data directory", "does not exist")


def test_bad_config_files(tmp_path, model_dir, capsys):
    fails(train(tmp_path, model_dir, config=tmp_path / "missing.yaml"), capsys,
          "config file not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {steps: 3\nmodel: [\n")
    fails(train(tmp_path, model_dir, config=broken), capsys, "not valid YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text(CONFIG.read_text() + "chekpoint_every: 5\n")
    fails(train(tmp_path, model_dir, config=typo), capsys,
          "unknown config key chekpoint_every (did you mean checkpoint_every?)")
    fails(["train", str(CONFIG), "--out", str(tmp_path / "r"), "--set", "train.steps"], capsys,
          "--set expects key=value")


def test_resume_with_other_settings_and_unknown_eval_task(tmp_path, model_dir, capsys):
    args = train(tmp_path, model_dir, "checkpoint_every=1")
    assert main(args) == 0
    capsys.readouterr()
    fails(args + ["--set", "train.batch_size=2", "--resume"], capsys,
          "was written with train.batch_size=4", "this run has 2")
    fails(["evaluate", str(tmp_path / "run"), "--task", "arc_medium",
           "--data-dir", str(tmp_path / "data")], capsys, "unknown task 'arc_medium'",
          command="evaluate")
    fails(["evaluate", str(tmp_path / "nothing"), "--task", "arc_easy"], capsys,
          "is not a run directory", command="evaluate")


def test_quantization_settings():
    import torch

    from bslora_pyro.quantization import QuantizationError, bnb_config, quantization_kwargs

    four = bnb_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_compute_dtype == torch.bfloat16 and four.bnb_4bit_use_double_quant
    assert bnb_config("8bit").load_in_8bit
    assert quantization_kwargs(None, torch.float32, "cpu") == {}
    with pytest.raises(QuantizationError, match="needs a CUDA GPU"):
        quantization_kwargs("8bit", torch.float32, "cpu")
    with pytest.raises(QuantizationError, match="must be null, 4bit or 8bit"):
        quantization_kwargs("2bit", torch.float32, "cpu")
