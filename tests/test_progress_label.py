"""The progress bar names the objective: the ELBO for methods with latent variables, the
loss for point estimates (plain LoRA has no KL term, so its loss is no ELBO)."""

from __future__ import annotations

import pytest
from conftest import make_questions

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.inference.svi import SVITrainer, TrainConfig, progress_fields
from bslora_pyro.methods import build_method
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_llama, tiny_tokenizer


def test_progress_fields_label_the_objective():
    record = {"loss": 12.5, "nll": 1.25, "kl": 0.0}
    assert progress_fields(record, variational=False) == {"loss": "12.5", "nll": "1.250"}
    assert progress_fields(record)["elbo"] == "-12.5"


@pytest.mark.parametrize(("method", "label"), [("mle", "loss"), ("mc_dropout", "loss"),
                                               ("bslora", "elbo"), ("blob", "elbo")])
def test_trainer_labels_by_latent_sites(method, label):
    scorer = ChoiceScorer(tiny_tokenizer(), "choice_loglik")
    adapter = AdapterConfig(r=2, alpha=4.0, target_modules=["q_proj"])
    built = build_method(method, tiny_llama(seed=0), scorer, adapter, {})
    trainer = SVITrainer(built, scorer.encode, TrainConfig(steps=1, batch_size=4))
    record = trainer.train_step(make_questions(8, seed=0))
    fields = progress_fields(record, trainer.variational)
    other = "loss" if label == "elbo" else "elbo"
    assert label in fields and other not in fields, fields
