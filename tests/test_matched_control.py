"""Random rank dropout matched to a learned posterior's sparsity: keep probabilities from a
run's gate posterior (per module or global), Bernoulli masks at those rates, saved with the
method, and a grid's "{seed}" placeholder."""

from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest
import torch
from tiny_run import CONFIG, save_tiny_model, write_arc

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.cli import main
from bslora_pyro.experiment import rundir
from bslora_pyro.methods import MethodError, build_method, method_module
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_llama, tiny_tokenizer

ADAPTER = AdapterConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])


def _build(options):
    return build_method("random_mask", tiny_llama(seed=0),
                        ChoiceScorer(tiny_tokenizer(), "choice_loglik"), ADAPTER, options)


def _fake_run(folder, modules, seed_values):
    folder.mkdir(parents=True)
    posterior = {m: values for m, values in zip(modules, seed_values, strict=True)}
    (folder / rundir.GATE_POSTERIOR).write_text(json.dumps(
        {"posterior": posterior, "prior": {m: [0.5] * 4 for m in modules}}))
    return folder


def test_keep_probabilities_come_from_the_matched_posterior(tmp_path):
    modules = list(_build({}).adapters)
    values = [[0.9, 0.9, 0.1, 0.1], [1.0, 0.8, 0.6, 0.2]] * (len(modules) // 2)
    run = _fake_run(tmp_path / "learned", modules, values)
    per_module = _build({"match_run": str(run)})
    expected = {m: statistics.fmean(v) for m, v in zip(modules, values, strict=True)}
    assert per_module.keep == pytest.approx(expected)
    overall = statistics.fmean(q for v in values for q in v)
    for value in _build({"match_run": str(run), "match": "global"}).keep.values():
        assert value == pytest.approx(overall)
    torch.manual_seed(0)
    per_module.prepare(20_000, sample=True)
    for name, layer in per_module.adapters.items():
        assert set(layer.gates.unique().tolist()) <= {0.0, 1.0}
        rate = float(layer.gates.mean())  # every rank at the module's keep probability
        assert rate == pytest.approx(expected[name], abs=0.01)
        assert layer.gates.mean(0).std() < 0.02  # no rank is preferred: random dropout
    per_module.prepare(1, sample=False)
    first = modules[0]
    assert torch.allclose(per_module.adapters[first].gates, torch.tensor(expected[first]))
    # saved with the resolved values: the learned run may be gone when it is loaded
    per_module.save(tmp_path / "weights")
    shutil.rmtree(run)
    loaded = method_module("random_mask").load(tmp_path / "weights", tiny_llama(seed=0),
                                               per_module.scorer)
    assert loaded.keep == pytest.approx(expected)


def test_bad_matched_controls_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gate_posterior.json"):
        _build({"match_run": str(tmp_path)})
    run = _fake_run(tmp_path / "other", ["model.layers.9.q_proj"], [[0.5] * 4])
    with pytest.raises(MethodError, match="do not fit the adapted modules"):
        _build({"match_run": str(run)})
    with pytest.raises(MethodError, match="exclude each other"):
        _build({"num_masked": 1, "keep_probability": 0.5})
    with pytest.raises(MethodError, match="in \\(0, 1\\]"):
        _build({"keep_probability": 1.5})


def test_a_grid_matches_each_seed_to_its_own_learned_run(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = write_arc(tmp_path / "data", n=16)
    out = tmp_path / "runs"
    common = ["--quiet", "--data-dir", str(data), "--set", f"model.name={model}"]
    assert main(["grid", str(CONFIG), "--out", str(out), "--methods", "bslora",
                 "--seeds", "0,1", *common]) == 0
    for seed in (0, 1):  # every finished bslora run records its gate posterior
        posterior = rundir.read_gate_posterior(out / "bslora" / f"seed{seed}")
        assert set(posterior) == {"posterior", "prior"}
    assert main(["grid", str(CONFIG), "--out", str(out), "--methods", "random_mask",
                 "--seeds", "0,1", *common, "--set", "method=random_mask",
                 "--set", f"method_options={{match_run: '{out}/bslora/seed{{seed}}'}}"]) == 0
    for seed in (0, 1):
        learned = rundir.read_gate_posterior(out / "bslora" / f"seed{seed}")["posterior"]
        saved = json.loads((out / "random_mask" / f"seed{seed}" / rundir.WEIGHTS
                            / "method.json").read_text())
        keep = saved["options"]["keep_probabilities"]
        assert keep == pytest.approx({m: statistics.fmean(v) for m, v in learned.items()})
    learned_run = out / "bslora" / "seed0"
    assert main(["analyze", str(learned_run), "--control", str(out / "random_mask" / "seed0"),
                 "--control", str(out / "random_mask" / "seed1")]) == 0
    report = (learned_run / rundir.REPORT).read_text()
    assert "## Learned posterior vs random rank dropout" in report
    assert "Against 2 matched random-dropout run(s)" in report


def test_dropout_distance_is_zero_exactly_for_random_dropout():
    from bslora_pyro.analysis.dropout import bernoulli_kl, dropout_distance, verdict

    flat = {"posterior": {"a": [0.3] * 4, "b": [0.7] * 2}, "prior": {"a": [0.5] * 4,
                                                                   "b": [0.5] * 2}}
    table = dropout_distance(flat)
    assert table["kl_to_dropout"].abs().max() < 1e-12
    assert "random rank dropout at its own sparsity" in verdict(table)
    spread = {"posterior": {"a": [0.99, 0.99, 0.01, 0.01]}, "prior": {"a": [0.5] * 4}}
    table = dropout_distance(spread)
    total = table[table["module"] == "total"].iloc[0]
    assert total["keep"] == pytest.approx(0.5) and total["decided"] == 4
    expected = 4 * (0.99 * math.log(0.99 / 0.5) + 0.01 * math.log(0.01 / 0.5))
    assert total["kl_to_dropout"] == pytest.approx(expected)
    assert float(bernoulli_kl(1.0, 0.5)) == pytest.approx(math.log(2))
    assert "prefers some ranks" in verdict(table)
