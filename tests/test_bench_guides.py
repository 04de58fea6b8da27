"""benchmarks/bench_guides.py on the tiny model, so the guide cost table cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_guides  # noqa: E402

from bslora_pyro.models.guides import available_guides  # noqa: E402


def test_every_guide_is_timed_against_the_mean_field_guide(tmp_path, capsys):
    out = tmp_path / "guides.json"
    bench_guides.main(bench_guides.parse_args(
        ["--models", "tiny", "--steps", "1", "--warmup", "0", "--out", str(out)]))
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())["results"]["tiny"]
    assert list(result["train"]) == ["mean_field"] + [
        g for g in available_guides() if g != "mean_field"]
    assert all(len(v) == 1 and v[0] > 0 for v in result["predict"].values())
    assert "mean_field" in printed and "/ mean_field" in printed
    assert result["targets"] == ["q_proj", "v_proj", "lm_head"]


def test_unknown_guide_is_named():
    with pytest.raises(SystemExit, match="unknown guide.*no_such_guide"):
        bench_guides.main(bench_guides.parse_args(["--models", "tiny", "--guides", "no_such_guide"]))
