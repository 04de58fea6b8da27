"""KL warm-up: the KL's weight rises linearly from 0 to kl_weight over the first
kl_warmup_ratio of the steps, every step's loss uses it, and a config at the default
serialises as before."""

from __future__ import annotations

import pytest
import torch
from conftest import make_questions

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.experiment.config import ExperimentConfig
from bslora_pyro.inference.svi import SVITrainer, TrainConfig, kl_weight_at
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_llama, tiny_tokenizer


def test_the_weight_ramps_up_then_stays():
    config = TrainConfig(steps=10, kl_warmup_ratio=0.4)
    assert [kl_weight_at(config, s) for s in range(6)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert kl_weight_at(TrainConfig(steps=10), 0) == 1.0
    assert kl_weight_at(TrainConfig(steps=10, kl_warmup_ratio=0.5, kl_weight=0.5), 1) == 0.2


def test_each_steps_loss_uses_the_scheduled_weight():
    torch.manual_seed(0)
    method = BayesianLora(tiny_llama(seed=0), ChoiceScorer(tiny_tokenizer(), "choice_loglik"),
                          AdapterConfig(r=2, alpha=4.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B away from zero, so that the gates get a gradient at once
        for layer in method.adapters.values():
            layer.lora_B.normal_(0.0, 0.5)
    config = TrainConfig(steps=4, batch_size=4, lr_gates=0.5, kl_warmup_ratio=0.5,
                         warmup_ratio=0.0)
    history = SVITrainer(method, method.scorer.encode, config).fit(make_questions(8),
                                                                    progress=False)
    assert [r.get("kl_weight", 1.0) for r in history] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert history[1]["kl"] > 0  # q has left the prior, so the weight matters
    for r in history:
        assert r["loss"] == pytest.approx(r["nll"] * 8 + r.get("kl_weight", 1.0) * r["kl"],
                                          rel=1e-5)


def test_a_config_at_the_default_serialises_as_before():
    assert "kl_warmup_ratio" not in ExperimentConfig().to_dict()["train"]
    data = ExperimentConfig(train=TrainConfig(kl_warmup_ratio=0.2)).to_dict()
    assert data["train"]["kl_warmup_ratio"] == 0.2
