"""experiments/length_bias.py: how often predictions pick the shortest answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import CONFIG, save_tiny_model, write_arc

from bslora_pyro.cli import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import length_bias  # noqa: E402


def test_summary_counts_shortest_and_longest_with_ties():
    lengths = torch.tensor([[1, 3, 3], [2, 2, 5], [4, 1, 0]])  # the last question has 2 choices
    probs = [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.6]]
    summary = length_bias.length_summary(lengths, probs, labels=[1, 0, 0])
    assert summary["n"] == 3
    assert summary["acc"] == pytest.approx(0.0)
    assert summary["picked_shortest"] == pytest.approx(2 / 3)  # 0 of q0, 1 of q2
    assert summary["correct_shortest"] == pytest.approx(1 / 3)  # 0 of q1 ties for shortest
    assert summary["picked_longest"] == pytest.approx(1 / 3)  # 2 of q1 (missing choice ignored)
    assert summary["correct_longest"] == pytest.approx(2 / 3)  # 1 of q0 ties; 0 of q2
    assert summary["picked_tokens"] == pytest.approx((1 + 5 + 1) / 3)
    assert summary["correct_tokens"] == pytest.approx((3 + 2 + 4) / 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("length")
    model, data = save_tiny_model(tmp / "model"), write_arc(tmp / "data", n=16)
    out = tmp / "run"
    assert cli(["train", str(CONFIG), "--out", str(out), "--quiet", "--data-dir", str(data),
                "--set", f"model.name={model}", "--set", "method=mle",
                "--set", "train.steps=2"]) == 0
    return out, data


def test_rows_match_the_runs_metrics(run, tmp_path):
    out, data = run
    report = tmp_path / "length.md"
    rows = length_bias.main(length_bias.parse_args(
        [str(out), "--data-dir", str(data), "--out", str(report)]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["set"] for r in rows] == [s for s in metrics if not s.startswith("_")]
    for row in rows:
        assert row["acc"] == pytest.approx(metrics[row["set"]]["acc"])
        assert 0 < row["picked_tokens"] and 0 < row["correct_tokens"]
    assert str(out) in report.read_text() and report.with_suffix(".json").is_file()


def test_a_gated_run_trains_and_is_read_under_per_token_scoring(run, tmp_path):
    _, data = run
    out = tmp_path / "mean"
    model = save_tiny_model(tmp_path / "model")
    assert cli(["train", str(CONFIG), "--out", str(out), "--quiet", "--data-dir", str(data),
                "--set", f"model.name={model}", "--set", "method=bslora",
                "--set", "model.scoring=choice_loglik_mean", "--set", "train.steps=2"]) == 0
    rows = length_bias.run_rows(out, str(data))
    assert rows and all(r["scoring"] == "choice_loglik_mean" for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert rows[0]["acc"] == pytest.approx(metrics[rows[0]["set"]]["acc"])


def test_letter_scoring_has_no_answer_tokens(run, tmp_path):
    out, _ = run
    letter = tmp_path / "letter"
    letter.mkdir()
    config = (out / "config.yaml").read_text().replace("choice_loglik", "letter")
    (letter / "config.yaml").write_text(config)
    with pytest.raises(SystemExit, match="length bias needs one of choice_loglik"):
        length_bias.run_rows(letter)
