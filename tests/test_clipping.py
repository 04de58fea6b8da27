"""Gradient clipping acts on the per-example gradient (the mean-loss gradient the reference
code clips), not on the dataset-scaled loss's, whose norm exceeds any per-example threshold
on every step."""

from __future__ import annotations

import torch
from conftest import make_questions

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.bayesian_lora import BayesianLora
from bslora_pyro.inference.svi import SVITrainer, TrainConfig, clip_threshold
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_llama, tiny_tokenizer


def test_clipping_does_not_fire_on_every_step_of_a_normal_run():
    torch.manual_seed(0)
    examples = make_questions(200, seed=4)
    adapter = AdapterConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "lm_head"],
                            layers="1:")
    method = BayesianLora(tiny_llama(seed=0), ChoiceScorer(tiny_tokenizer(), "choice_loglik"),
                          adapter)
    config = TrainConfig(steps=12, batch_size=8, lr_factors=1e-2, warmup_ratio=0.0)
    assert clip_threshold(config, len(examples)) == 1.0 * 200
    trainer = SVITrainer(method, method.scorer.encode, config)
    history = trainer.fit(examples, progress=False)
    clipped = [r["clipped"] for r in history]
    assert not all(clipped), "clipping fired on every step"
    # the same threshold on the dataset-scaled gradient would have fired on every one
    assert all(r["grad_norm"] * len(examples) > config.grad_clip for r in history)
    for r in history:
        assert r["clipped"] == (r["grad_norm"] > config.grad_clip)
