"""Every variant of the shipped study and grid files builds a valid config and method.

A misspelt key in a variant's ``set`` would otherwise surface only after the runs before it
in a two-hour grid; here each one is built on a tiny model of the same layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_run import save_tiny_model

from bslora_pyro.experiment.config import load_config
from bslora_pyro.experiment.grid import variant_config
from bslora_pyro.experiment.setup import build_method, build_scorer_and_backbone

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
#: each variants file -> the config its header says it runs on
VARIANT_FILES = {
    "paper_cpu_methods.yaml": "paper_cpu.yaml",
    "study_paper_cpu.yaml": "paper_cpu.yaml",
    "paper_cpu_sweep.yaml": "paper_cpu.yaml",
    "study_guides.yaml": "quickstart.yaml",
    "study_variants.yaml": "quickstart.yaml",
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


@pytest.mark.parametrize(("file", "variant"), CASES, ids=[f"{f}:{v['name']}" for f, v in CASES])
def test_shipped_variant_builds(file, variant, tiny_model):
    base = load_config(CONFIGS / VARIANT_FILES[file], [f"model.name={tiny_model}",
                                                      "model.device=cpu"])
    config = variant_config(base, variant["name"], variant["method"],
                            variant.get("set", []), seed=0)
    backbone, scorer = build_scorer_and_backbone(config)
    method = build_method(config, backbone, scorer)
    assert config.method == variant["method"]
    assert method is not None
