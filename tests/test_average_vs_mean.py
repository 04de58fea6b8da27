"""experiments/average_vs_mean.py: a run's M-draw average against one deterministic forward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_run import CONFIG, save_tiny_model, write_arc

from bslora_pyro.cli import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import average_vs_mean  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("average")
    model, data = save_tiny_model(tmp / "model"), write_arc(tmp / "data", n=16)
    out = {}
    for method in ("mle", "bslora"):
        out[method] = tmp / method
        assert cli(["train", str(CONFIG), "--out", str(out[method]), "--quiet",
                    "--data-dir", str(data), "--set", f"model.name={model}",
                    "--set", f"method={method}", "--set", "train.steps=6",
                    "--set", "train.lr_factors=0.05"]) == 0
    return out, data


def test_a_point_estimate_is_its_own_average(runs):
    out, data = runs
    row = average_vs_mean.compare_run(out["mle"], str(data), progress=False)
    for key in average_vs_mean.KEYS:
        assert row[f"mean_{key}"] == pytest.approx(row[f"average_{key}"], abs=1e-6)


def test_gated_run_compares_its_average_with_the_posterior_mean(runs, tmp_path):
    out, data = runs
    report = tmp_path / "average.md"
    rows = average_vs_mean.main(average_vs_mean.parse_args(
        [str(out["bslora"]), "--data-dir", str(data), "--quiet", "--out", str(report)]))
    (row,) = rows
    assert row["set"] == "arc_easy:dev" and row["num_samples"] == 3
    assert row["mi"] > 0  # the draws disagree, so the average is not one forward
    assert row["mean_nll"] != pytest.approx(row["average_nll"], abs=1e-9)
    assert str(out["bslora"]) in report.read_text()
    assert report.with_suffix(".json").is_file()


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory: config.yaml is missing"):
        average_vs_mean.main(average_vs_mean.parse_args([str(tmp_path), "--quiet"]))
