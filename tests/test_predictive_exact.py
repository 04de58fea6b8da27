"""The predictive and its files keep log-probabilities: NLL is exact for any gap, an
unlabelled set is scored for OOD detection only, and a Gaussian predictive over logits is
tempered exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.evaluation import set_metrics
from bslora_pyro.inference.predictive import NO_LABEL, LogitGaussian, Predictions, predict
from bslora_pyro.inference.temperature import fit_temperature, temper


@dataclass
class _Batch:
    logits: torch.Tensor  # [M, B, C]
    labels: torch.Tensor
    choice_mask: torch.Tensor


class _FixedLogits:
    """A method whose draws are given logits (rows of ``table`` by example index)."""

    def __init__(self, table: torch.Tensor, labels: torch.Tensor) -> None:
        self.table, self.labels = table, labels

    def encode(self, examples):
        index = torch.tensor(examples)
        mask = torch.ones(len(examples), self.table.shape[-1], dtype=torch.bool)
        return _Batch(self.table[:, index], self.labels[index], mask)

    def predict_logits(self, batch, num_samples=1, deterministic=False):
        return batch.logits


def _predict(table, labels):
    method = _FixedLogits(table, labels)
    return predict(method, list(range(table.shape[1])), method.encode, num_samples=table.shape[0],
                   batch_size=2, progress=False)


def test_nll_is_exact_far_past_float32_underflow(tmp_path):
    # example 0: both draws put 200 and 400 nats against the label; example 1: a coin
    table = torch.tensor([[[0.0, 200.0], [0.0, 0.0]], [[0.0, 400.0], [0.0, 0.0]]])
    preds = _predict(table, torch.tensor([0, 1]))
    assert preds.probs[0, 0] == 0.0  # the probability itself underflows ...
    # ... its log does not: log((e^-200 + e^-400) / 2) = -200 - log 2 (to rounding)
    expected = ((200 + math.log(2)) + math.log(2)) / 2
    assert set_metrics(preds)["nll"] == pytest.approx(expected, rel=1e-6)
    rundir.write_predictions(tmp_path, "set", ["a", "b"], preds)
    back = rundir.read_predictions(tmp_path / rundir.PREDICTIONS / "set.jsonl")
    assert set_metrics(back)["nll"] == pytest.approx(expected, rel=1e-6)


def test_a_single_draw_gets_no_ood_scores_by_mutual_information(tmp_path):
    torch.manual_seed(0)
    labelled = _predict(torch.randn(1, 40, 2), torch.randint(2, (40,)))
    unlabelled = _predict(0.1 * torch.randn(1, 30, 2), torch.full((30,), NO_LABEL))
    out = set_metrics(unlabelled, reference=labelled)
    assert out["num_samples"] == 1 and out["mean_mutual_information"] == 0.0
    assert "ood_auroc_entropy" in out and "ood_fpr95_entropy" in out
    assert "ood_auroc_mi" not in out and "ood_fpr95_mi" not in out


def test_unlabelled_set_gets_uncertainty_and_ood_scores_only(tmp_path):
    torch.manual_seed(0)
    labelled = _predict(torch.randn(3, 40, 2), torch.randint(2, (40,)))
    unlabelled = _predict(0.1 * torch.randn(3, 30, 2), torch.full((30,), NO_LABEL))
    assert labelled.labelled and not unlabelled.labelled
    out = set_metrics(unlabelled, reference=labelled)
    assert not {"acc", "ece", "nll", "brier", "aurc"} & set(out)
    for key in ("mean_entropy", "mean_mutual_information", "ood_auroc_entropy",
                "ood_auroc_mi", "ood_fpr95_entropy", "ood_fpr95_mi"):
        assert key in out and math.isfinite(out[key])
    assert out["ood_auroc_entropy"] > 0.8  # near-uniform predictions: high entropy
    rundir.write_predictions(tmp_path, "ood", [str(i) for i in range(30)], unlabelled)
    line = (tmp_path / rundir.PREDICTIONS / "ood.jsonl").read_text().splitlines()[0]
    assert '"label": null' in line
    back = rundir.read_predictions(tmp_path / rundir.PREDICTIONS / "ood.jsonl")
    assert not back.labelled


def test_gaussian_predictive_is_tempered_exactly():
    """T divides every logit draw; the average is recomputed from the Gaussian with the same
    common random numbers, not from the few kept draws."""
    torch.manual_seed(0)
    n, c = 50, 3
    mean = 3 * torch.randn(n, c, dtype=torch.float64)
    root = torch.randn(n, c, c, dtype=torch.float64)
    covariance = 4 * root @ root.transpose(1, 2)
    mask = torch.ones(n, c, dtype=torch.bool)
    gaussian = LogitGaussian(mean, covariance, draws=8_000, seed=3)
    labels = torch.randint(c, (n,))
    kept = torch.log_softmax(mean + torch.randn(2, n, c, dtype=torch.float64), -1).float()
    preds = Predictions(gaussian.log_probs(mask).float(), kept, labels, mask, gaussian)
    scaled = temper(preds, 2.0)
    generator = torch.Generator().manual_seed(99)
    noise = torch.randn(50_000, c, dtype=torch.float64, generator=generator)
    draws = mean + torch.einsum("ncd,sd->snc", torch.linalg.cholesky(covariance), noise)
    expected = torch.softmax(draws / 2.0, -1).mean(0)
    torch.testing.assert_close(scaled.probs.double(), expected, rtol=0, atol=0.02)
    fit = fit_temperature(preds)
    assert fit["validation_nll_after"] <= fit["validation_nll_before"]
