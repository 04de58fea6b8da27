"""Every variant of the shipped study and grid files builds a valid config and method.

A misspelt key in a variant's ``set`` would otherwise surface only after the runs before it
in a two-hour grid; here each one is built on a tiny model of the same layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny_run import save_tiny_model

from bslora_pyro.experiment.config import load_config
from bslora_pyro.experiment.grid import _overrides, variant_config
from bslora_pyro.experiment.rundir import write_gate_posterior
from bslora_pyro.experiment.setup import build_method, build_scorer_and_backbone

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
#: each variants file -> the config its header says it runs on
VARIANT_FILES = {
    "paper_cpu_methods.yaml": "paper_cpu.yaml",
    "study_paper_cpu.yaml": "paper_cpu.yaml",
    "paper_cpu_sweep.yaml": "paper_cpu.yaml",
    "study_guides.yaml": "arc_quickstart.yaml",
    "study_variants.yaml": "arc_quickstart.yaml",
    "quickstart_lr.yaml": "quickstart.yaml",
    "sentiment_methods.yaml": "sentiment.yaml",
    "sentiment_study.yaml": "sentiment.yaml",
}
CASES = [
    (file, variant)
    for file in VARIANT_FILES
    for variant in yaml.safe_load((ROOT / "experiments" / file).read_text())["variants"]
]


def test_every_variants_file_is_covered():
    shipped = {p.name for p in (ROOT / "experiments").glob("*.yaml")}
    assert shipped == set(VARIANT_FILES)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("variants") / "model")


def _build(file: str, variant: dict, tiny_model: Path, out: Path):
    base = load_config(CONFIGS / VARIANT_FILES[file], [f"model.name={tiny_model}",
                                                      "model.device=cpu"])
    config = variant_config(base, variant["name"], variant["method"],
                            _overrides(variant, out), seed=0)  # {out} as the grid fills it
    backbone, scorer = build_scorer_and_backbone(config)
    return config, build_method(config, backbone, scorer)


@pytest.mark.parametrize(("file", "variant"), CASES, ids=[f"{f}:{v['name']}" for f, v in CASES])
def test_shipped_variant_builds(file, variant, tiny_model, tmp_path):
    # a matched control reads the gate posterior of the run it names: build that variant
    # first and write its (untrained) posterior where the grid would
    for reference in re.findall(r"\{out\}/([\w.-]+)/seed", " ".join(variant.get("set", []))):
        named = {v["name"]: v for v in yaml.safe_load((ROOT / "experiments" / file)
                                                     .read_text())["variants"]}
        assert reference in named, f"{variant['name']} matches unknown variant {reference}"
        _, ref_method = _build(file, named[reference], tiny_model, tmp_path)
        run_dir = tmp_path / reference / "seed0"
        run_dir.mkdir(parents=True)
        assert write_gate_posterior(run_dir, ref_method) is not None
    config, method = _build(file, variant, tiny_model, tmp_path)
    assert config.method == variant["method"]
    assert method is not None
