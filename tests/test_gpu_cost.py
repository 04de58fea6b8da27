"""The GPU cost benchmark and the GPU check script, run on the CPU (``--cpu-smoke``) so they
cannot rot between the rare sessions with a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# every measurement the report's ratios are made of, per model and placement
MEASURES = {
    "train_peft", "train_plain", "train_bayes", "train_no_prefix", "predict_peft",
    "predict_plain", "predict_plain_uncached", "predict_bayes", "predict_sequential",
    "mem_peft", "mem_plain", "mem_bayes", "params_peft", "params_plain", "params_bayes",
}
# modules the GPU machine lacks besides pyro (which comes from the carried wheels)
MISSING_ON_GPU = ["datasets", "arviz", "gguf"]


def load_gpu_cost():
    spec = importlib.util.spec_from_file_location("gpu_cost", ROOT / "benchmarks" / "gpu_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_report(report: dict) -> None:
    results = report["results"]["smoke"]
    assert set(results) == {"all", "top"}
    for values in results.values():
        assert MEASURES <= set(values)
        assert values["params_peft"] == values["params_plain"]  # peft adapts the same modules
    labels = {row["metric"] for row in report["ratios"]}
    for reference in ("project LoRA step", "peft LoRA step", "1 cached LoRA fwd",
                      "1 uncached LoRA fwd", "1 peft LoRA fwd", "3 sequential fwds"):
        assert any(label.endswith(reference) for label in labels), reference
    stated = [row for row in report["ratios"] if row["met"] is not None]
    assert len(stated) == 8  # the targets: six with all blocks, two with the top 2
    assert len(report["targets"]) == 1 + len(stated)
    assert all(line.rstrip().endswith(("met", "MISSED")) for line in report["targets"][1:])


def test_cpu_smoke_measures_every_reference_and_states_the_targets(tmp_path):
    gpu_cost = load_gpu_cost()
    out = tmp_path / "gpu_cost.json"
    report = gpu_cost.main(gpu_cost.parse_args(["--cpu-smoke", "--out", str(out)]))
    assert report["environment"]["dtype"] == "torch.bfloat16"  # the GPU's bf16 base path
    check_report(report)
    assert json.loads(out.read_text())["targets"] == report["targets"]


def test_cuda_without_a_device_is_a_clear_error(capsys):
    gpu_cost = load_gpu_cost()
    if gpu_cost.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        gpu_cost.parse_args(["--models", "llama31-8b"])
    assert "--cpu-smoke" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_script_runs_without_the_packages_the_gpu_machine_lacks(tmp_path):
    """``scripts/gpu_check.sh --cpu-smoke`` with datasets, arviz and gguf unimportable, and
    pyro too where gpu_wheels/ exists (the script then installs it from those wheels)."""
    wheels = ROOT / "gpu_wheels"
    missing = [*MISSING_ON_GPU, "pyro"] if list(wheels.glob("pyro_ppl-*.whl")) else MISSING_ON_GPU
    stubs = tmp_path / "stubs"
    for name in missing:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    env = {**os.environ, "PYTHONPATH": str(stubs), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "BSLORA_GPU_WHEELS": str(wheels)}
    env.pop("OUT", None)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "env.txt", "cuda_tests.log", "cuda_tests.xml", "gpu_cost.log", "gpu_cost.json"}
    check_report(json.loads((out / "gpu_cost.json").read_text()))
    assert "skipped" in (out / "cuda_tests.log").read_text()  # no CUDA here: skips, no errors
