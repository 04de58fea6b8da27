"""Posterior analysis: InferenceData, KL tables, plots, report and the notebook, on one tiny
run (gate learning rate 0, so q stays at the prior) and a copy with moved gate logits."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bslora_pyro.models import available_guides, available_priors

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
NOTEBOOK = REPO / "notebooks" / "posterior_analysis.ipynb"
NUM_DRAWS = 2000
SHIFT = torch.tensor([-2.0, -0.5, 0.5, 2.0])  # added to every module's phi (r = 4)
PNGS = ("gate_heatmap.png", "active_ranks.png", "risk_coverage.png", "uncertainty.png",
        "training_curves.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny bslora run with ``train.lr_gates=0``: q(z) ends where it started, at the prior."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"no local data at {DATA_DIR}")
    from bslora_pyro.experiment.config import load_config
    from bslora_pyro.experiment.runner import run_experiment
    from bslora_pyro.testing import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("analysis")
    tiny_llama().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    config = load_config(REPO / "experiments" / "configs" / "tiny.yaml", [
        f"model.name={root / 'model'}", f"data.dir={DATA_DIR}", "train.lr_gates=0.0",
        "model.device=cpu",
    ])
    run_experiment(config, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def analyzed(run_dir) -> list[Path]:
    from bslora_pyro.analysis import analyze_run

    return analyze_run(run_dir, num_draws=NUM_DRAWS)


@pytest.fixture(scope="module")
def moved_dir(run_dir, analyzed, tmp_path_factory) -> Path:
    """A copy of the run whose gate logits phi were moved by ``SHIFT``, then analysed
    through the CLI."""
    from safetensors.torch import load_file, save_file

    from bslora_pyro.cli import main

    moved = tmp_path_factory.mktemp("moved") / "run"
    shutil.copytree(run_dir, moved)
    weights = moved / "weights" / "posterior.safetensors"
    state = load_file(str(weights))
    for key in state:
        if key.startswith("variational/gate_logits."):
            state[key] = state[key] + SHIFT
    save_file(state, str(weights))
    assert main(["analyze", str(moved)]) == 0
    return moved


def _idata(run: Path):
    from bslora_pyro.analysis import load_inference_data

    return load_inference_data(run / "posterior.nc")


def _method(run: Path):
    from bslora_pyro.experiment.setup import load_trained_method, read_run_config

    return load_trained_method(run, read_run_config(run))


def test_posterior_netcdf_dims_and_draws(run_dir, analyzed):
    from bslora_pyro.analysis.inference_data import az

    assert run_dir / "posterior.nc" in analyzed
    idata = az.from_netcdf(str(run_dir / "posterior.nc"))
    assert {"posterior", "prior", "constant_data", "training"} <= set(idata.groups())
    gate = idata.posterior["gate"]
    assert gate.dims == ("chain", "draw", "module_type", "layer", "rank")
    assert gate.sizes["draw"] == NUM_DRAWS
    assert list(gate.module_type.values) == ["self_attn.q_proj", "self_attn.v_proj"]
    assert list(gate.layer.values) == [1] and list(gate["rank"].values) == [0, 1, 2, 3]
    assert set(np.unique(gate.values)) <= {0.0, 1.0}
    assert idata.posterior["gate_lm_head"].dims == ("chain", "draw", "rank")
    assert idata.posterior["active_ranks"].dims == ("chain", "draw", "module_type", "layer")
    training = idata["training"]
    assert list(training.step.values) == [1, 2, 3, 4]
    assert {"loss", "elbo", "nll", "kl", "active_ranks"} <= set(training.data_vars)
    assert training["inclusion_prob_history"].dims == ("log_step", "module_type", "layer", "rank")


def _check_means(run: Path) -> None:
    idata, method = _idata(run), _method(run)
    for path, q in method.inclusion_probs().items():
        name = "gate_lm_head" if path == "lm_head" else "gate"
        draws = idata.posterior[name]
        if name == "gate":
            draws = draws.sel(module_type=path.split(".", 3)[3], layer=1)
        mean = draws.mean(("chain", "draw")).values
        tolerance = 4 * np.sqrt(q.numpy() * (1 - q.numpy()) / NUM_DRAWS) + 1e-3
        assert np.all(np.abs(mean - q.numpy()) < tolerance), (path, mean, q)


def test_gate_means_equal_inclusion_probs(run_dir, analyzed, moved_dir):
    _check_means(run_dir)
    _check_means(moved_dir)


def test_kl_is_zero_at_initialisation(run_dir, analyzed):
    import pandas as pd

    idata = _idata(run_dir)
    for name in ("kl", "kl_lm_head", "kl_total"):
        assert np.nanmax(np.abs(idata.posterior[name].values)) < 1e-6
    const = idata.constant_data
    np.testing.assert_allclose(const["inclusion_prob"], const["prior_inclusion_prob"], atol=1e-6)
    modules = pd.read_csv(run_dir / "gate_modules.csv")
    assert len(modules) == 3 and np.all(np.abs(modules["kl"]) < 1e-6)
    summary = pd.read_csv(run_dir / "gate_summary.csv", index_col=0)
    assert "active_ranks[self_attn.q_proj, 1]" in summary.index
    assert {"mean", "sd"} <= set(summary.columns) and any("hdi" in c for c in summary.columns)
    assert abs(summary.loc["active_ranks_total", "mean"] - 6.0) < 0.2  # 3 modules x 4 x 0.5


def test_kl_is_positive_after_moving_phi(moved_dir):
    import pandas as pd

    q = torch.sigmoid(SHIFT)  # phi = logit(0.5) + SHIFT
    expected = float((q * torch.log(q / 0.5) + (1 - q) * torch.log((1 - q) / 0.5)).sum())
    modules = pd.read_csv(moved_dir / "gate_modules.csv")
    assert np.all(modules["kl"] > 0.1)
    np.testing.assert_allclose(modules["kl"], expected, rtol=1e-4)
    np.testing.assert_allclose(modules["active_ranks"], float(q.sum()), rtol=1e-5)


def test_pngs_exist_and_report_links_them(run_dir, analyzed):
    report = (run_dir / "report.md").read_text()
    assert "## Gate posterior" in report and "## Predictive uncertainty" in report
    for name in PNGS:
        assert (run_dir / name).stat().st_size > 1000
        assert f"({name})" in report
    for name in ("gate_summary.md", "posterior.nc", "reliability.png"):
        assert f"({name})" in report
    assert all(path.exists() for path in analyzed)


def test_run_without_gates_gets_predictive_plots_only(run_dir, analyzed, tmp_path):
    from bslora_pyro.analysis import analyze_run

    plain = tmp_path / "run"
    shutil.copytree(run_dir, plain, ignore=shutil.ignore_patterns("weights"))
    config = yaml.safe_load((plain / "config.yaml").read_text())
    config["method"] = "zero_shot"
    (plain / "config.yaml").write_text(yaml.safe_dump(config))
    (plain / "gate_history.jsonl").unlink()
    written = analyze_run(plain)
    assert not (plain / "posterior.nc").exists() and not (plain / "gate_heatmap.png").exists()
    for name in ("risk_coverage.png", "uncertainty.png"):
        assert plain / name in written
    report = (plain / "report.md").read_text()
    assert "has no rank gates" in report and "(uncertainty.png)" in report


@pytest.mark.parametrize("guide", available_guides())
@pytest.mark.parametrize("prior", available_priors())
def test_inference_data_of_every_prior_and_guide(prior, guide):
    from bslora_pyro.adapter import AdapterConfig
    from bslora_pyro.analysis import build_inference_data
    from bslora_pyro.bayesian_lora import BayesianLora
    from bslora_pyro.scoring import ChoiceScorer
    from bslora_pyro.testing import tiny_llama, tiny_tokenizer

    targets = r"model\.layers\.\d+\.self_attn\.[qv]_proj|model\.layers\.3\.mlp\.up_proj|lm_head"
    adapter = AdapterConfig(r=3, alpha=3.0, target_modules=targets, layers="2:")
    method = BayesianLora(tiny_llama(num_layers=4), ChoiceScorer(tiny_tokenizer(), "letter"),
                          adapter, prior=prior, guide=guide)
    idata = build_inference_data(method, num_draws=400, seed=1)
    post = idata.posterior
    assert list(post.module_type.values) == ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"]
    assert list(post.layer.values) == [2, 3]
    assert np.isnan(post["gate"].sel(module_type="mlp.up_proj", layer=2)).all()
    for site in method.prior.latent_sites():
        if len(site.modules) == 1:  # a module's own latent: gridded (or suffixed) like its gates
            loose = re.sub(r"\W", "_", site.group)
            name = site.suffix if site.group.startswith("model.layers") else f"{site.suffix}_{loose}"
            assert post[name].dims[:2] == ("chain", "draw") and name in idata.prior
        else:  # shared by a group of modules (one per layer): a variable of its own
            name = re.sub(r"\W", "_", site.name)
            assert name in post and name in idata.prior and f"kl_{name}" in post
    kl_parts = [v for k, v in post.data_vars.items() if k.startswith("kl") and k != "kl_total"]
    total = sum(float(np.nansum(v.mean(("chain", "draw")))) for v in kl_parts)
    assert float(post["kl_total"].mean()) == pytest.approx(total, rel=1e-4, abs=1e-6)
    assert float(post["active_ranks_total"].mean()) > 0.0


def _use_this_python_kernel(tmp_path: Path, monkeypatch) -> None:
    """A ``python3`` kernelspec running this interpreter, found first via JUPYTER_PATH."""
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("jupyter_client finds no python3 kernel")
    if spec.argv[0] != sys.executable:
        pytest.skip(f"the python3 kernel runs {spec.argv[0]}, not {sys.executable}")


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5


def test_notebook_executes(run_dir, analyzed, tmp_path, monkeypatch):
    """Started from ``notebooks/`` without ``BSLORA_RUN_DIR``, the notebook reads its default
    run folder: where the quick start writes its Bayesian sparse LoRA run."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _use_this_python_kernel(tmp_path, monkeypatch)
    monkeypatch.delenv("BSLORA_RUN_DIR", raising=False)
    checkout = tmp_path / "checkout"
    shutil.copytree(run_dir, checkout / "runs" / "quickstart" / "bslora" / "seed0")
    (checkout / "notebooks").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(checkout / "notebooks")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("runs/quickstart/bslora/seed0: method bslora" in o.get("text", "")
               for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


def test_rendered_notebook_page_has_the_figures_and_the_run(run_dir, analyzed, tmp_path,
                                                            monkeypatch):
    """scripts/render_notebook.py executes a copy on a run and writes Markdown + PNGs."""
    pytest.importorskip("nbclient")
    _use_this_python_kernel(tmp_path, monkeypatch)
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import render_notebook

    page = tmp_path / "docs" / "notebook.md"
    page.parent.mkdir()
    render_notebook.main([str(NOTEBOOK), str(run_dir), "--out", str(page),
                          "--title", "The notebook", "--intro", "Rendered on a tiny run."])
    text = page.read_text()
    assert text.startswith("# The notebook\n\nRendered on a tiny run.")
    relative = os.path.relpath(run_dir.resolve(), NOTEBOOK.parent.resolve())
    assert f"run {relative}: method bslora" in text
    figures = sorted((tmp_path / "docs" / "notebook_files").glob("*.png"))
    assert len(figures) >= 4 and all(f"notebook_files/{f.name}" in text for f in figures)
    with pytest.raises(SystemExit, match="no posterior.nc"):
        render_notebook.main([str(NOTEBOOK), str(tmp_path), "--out", str(page)])
