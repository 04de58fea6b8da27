"""Metrics against hand computations on small worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bslora_pyro.metrics import (
    accuracy,
    area_under_risk_coverage,
    auroc,
    brier_score,
    expected_calibration_error,
    fpr_at_tpr,
    mutual_information,
    negative_log_likelihood,
    nll_from_log_probs,
    predictive_entropy,
    reliability_bins,
    risk_coverage_curve,
    summarize,
)

# Four examples, three classes. Top-label confidence / prediction / correct:
#   ex0: 0.70 -> class 0, label 0: correct
#   ex1: 0.72 -> class 0, label 1: wrong
#   ex2: 0.50 -> class 0, label 1: wrong
#   ex3: 0.95 -> class 2, label 2: correct
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.72, 0.18, 0.10],
        [0.50, 0.30, 0.20],
        [0.02, 0.03, 0.95],
    ]
)
LABELS = np.array([0, 1, 1, 2])


def test_accuracy() -> None:
    assert accuracy(PROBS, LABELS) == pytest.approx(2 / 4)


@pytest.mark.parametrize("n_bins", [15, 5])
def test_ece_worked_example(n_bins: int) -> None:
    # With 15 bins of width 1/15: 0.70 and 0.72 fall in (10/15, 11/15] = (0.667, 0.733],
    # 0.50 in (7/15, 8/15] = (0.467, 0.533], 0.95 in (14/15, 1].
    # With 5 bins of width 0.2 the grouping is the same: (0.6, 0.8], (0.4, 0.6], (0.8, 1].
    #   bin {0.70, 0.72}: mean conf 0.71, accuracy 1/2, gap 0.21, weight 2/4 -> 0.105
    #   bin {0.50}:       mean conf 0.50, accuracy 0,   gap 0.50, weight 1/4 -> 0.125
    #   bin {0.95}:       mean conf 0.95, accuracy 1,   gap 0.05, weight 1/4 -> 0.0125
    expected = 0.105 + 0.125 + 0.0125  # 0.2425
    assert expected_calibration_error(PROBS, LABELS, n_bins=n_bins) == pytest.approx(expected)


def test_reliability_bins_worked_example() -> None:
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    np.testing.assert_allclose(bins["edges"], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins["count"], [0, 0, 1, 2, 1])
    np.testing.assert_allclose(bins["confidence"][2:], [0.50, 0.71, 0.95])
    np.testing.assert_allclose(bins["accuracy"][2:], [0.0, 0.5, 1.0])
    assert np.isnan(bins["confidence"][:2]).all() and np.isnan(bins["accuracy"][:2]).all()


def test_bins_are_right_closed() -> None:
    # Confidence 0.5 with 2 bins lies in (0, 0.5], confidence 1.0 in (0.5, 1].
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    bins = reliability_bins(probs, np.array([0, 0, 1]), n_bins=2)
    np.testing.assert_array_equal(bins["count"], [1, 2])
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_negative_log_likelihood() -> None:
    # p(label): 0.70, 0.18, 0.30, 0.95.
    expected = -(math.log(0.70) + math.log(0.18) + math.log(0.30) + math.log(0.95)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected)
    # Nothing is clipped: a zero probability is an infinite loss, a tiny one its own.
    zero = negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1]))
    assert zero == math.inf
    tiny = negative_log_likelihood(np.array([[1.0, 1e-40]]), np.array([1]))
    assert tiny == pytest.approx(40 * math.log(10))


def test_nll_from_log_probs_is_exact_past_any_underflow() -> None:
    """200 and 1,000 nats wrong score 200 and 1,000 (float32 probabilities underflow at
    ~103 nats, a 1e-12 clip would give 27.6)."""
    log_probs = np.array([[0.0, -200.0], [-1000.0, 0.0], [math.log(0.5), math.log(0.5)]])
    labels = np.array([1, 0, 1])
    assert nll_from_log_probs(log_probs, labels) == pytest.approx((200 + 1000 + math.log(2)) / 3)
    probs = np.exp(log_probs)
    assert summarize(probs, labels, log_probs=log_probs)["nll"] == pytest.approx(
        (200 + 1000 + math.log(2)) / 3)


def test_brier_score() -> None:
    # ex0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14
    # ex1: 0.72^2 + 0.82^2 + 0.1^2 = 0.5184 + 0.6724 + 0.01 = 1.2008
    # ex2: 0.5^2 + 0.7^2 + 0.2^2 = 0.25 + 0.49 + 0.04 = 0.78
    # ex3: 0.02^2 + 0.03^2 + 0.05^2 = 0.0004 + 0.0009 + 0.0025 = 0.0038
    expected = (0.14 + 1.2008 + 0.78 + 0.0038) / 4  # 0.53115
    assert brier_score(PROBS, LABELS) == pytest.approx(expected)


def test_predictive_entropy() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(predictive_entropy(probs), [math.log(4), 0.0, math.log(2)])


def test_mutual_information_zero_when_samples_agree() -> None:
    one = np.array([[0.6, 0.4], [0.1, 0.9]])
    samples = np.stack([one, one, one])  # [M=3, N=2, C=2]
    np.testing.assert_allclose(mutual_information(samples), [0.0, 0.0], atol=1e-12)


def test_mutual_information_positive_when_samples_disagree() -> None:
    # Two confident samples that disagree: mean [0.5, 0.5] has entropy log 2, each sample 0.
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(mutual_information(samples), [math.log(2)])
    # Mild disagreement: H([0.5, 0.5]) - (H([0.8, 0.2]) + H([0.2, 0.8])) / 2.
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    mild = mutual_information(np.array([[[0.8, 0.2]], [[0.2, 0.8]]]))
    np.testing.assert_allclose(mild, [math.log(2) - h])
    assert mild[0] > 0


def _auroc_pairwise(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    total = 0.0
    for s_out in scores_out:
        for s_in in scores_in:
            total += 1.0 if s_out > s_in else 0.5 if s_out == s_in else 0.0
    return total / (len(scores_in) * len(scores_out))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores_in = rng.integers(0, 6, size=37).astype(float)  # small range: many ties
    scores_out = rng.integers(2, 8, size=23).astype(float)
    expected = _auroc_pairwise(scores_in, scores_out)
    assert auroc(scores_in, scores_out) == pytest.approx(expected)
    continuous_in, continuous_out = rng.normal(size=50), rng.normal(0.5, size=40)
    expected = _auroc_pairwise(continuous_in, continuous_out)
    assert auroc(continuous_in, continuous_out) == pytest.approx(expected)


def test_auroc_extremes() -> None:
    assert auroc([0.1, 0.2], [0.3, 0.9]) == 1.0
    assert auroc([0.3, 0.9], [0.1, 0.2]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5


def test_risk_coverage_curve_worked_example() -> None:
    # Most confident first: 0.95 (right), 0.72 (wrong), 0.70 (right), 0.50 (wrong).
    coverages, risks = risk_coverage_curve(PROBS, LABELS)
    np.testing.assert_allclose(coverages, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risks, [0.0, 1 / 2, 1 / 3, 2 / 4])
    expected_area = (0.0 + 1 / 2 + 1 / 3 + 2 / 4) / 4
    assert area_under_risk_coverage(PROBS, LABELS) == pytest.approx(expected_area)


def test_risk_coverage_with_custom_confidence() -> None:
    # Ranking by a score that puts the wrong answers first.
    _, risks = risk_coverage_curve(PROBS, LABELS, confidence=[0.0, 1.0, 0.9, 0.1])
    np.testing.assert_allclose(risks, [1.0, 1.0, 2 / 3, 2 / 4])


def test_risk_coverage_averages_ties_over_orders() -> None:
    """Equal confidences: the curve is the mean over orders, whatever the dataset order."""
    probs = np.array([[0.8, 0.2]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 1, 0, 1, 0, 0])  # the 0.8 tie: 2 of 4 wrong; the 0.6 tie: none
    _, risks = risk_coverage_curve(probs, labels)
    np.testing.assert_allclose(risks, [0.5, 0.5, 0.5, 0.5, 2 / 5, 2 / 6])
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(labels))
        _, permuted = risk_coverage_curve(probs[order], labels[order])
        np.testing.assert_allclose(permuted, risks)


def test_fpr_at_95_tpr() -> None:
    scores_out = np.arange(100, 200, dtype=float)  # OOD: 100..199
    scores_in = np.arange(0, 120, dtype=float)  # ID: 0..119
    # 95 % of OOD scores are >= 105; ID scores >= 105: 105..119 -> 15 of 120
    assert fpr_at_tpr(scores_in, scores_out) == pytest.approx(15 / 120)
    assert fpr_at_tpr(scores_in, scores_out + 1000) == 0.0
    assert fpr_at_tpr(scores_out, scores_in) == 1.0


def test_summarize() -> None:
    summary = summarize(PROBS, LABELS)
    assert set(summary) == {"acc", "ece", "nll", "brier", "n"}
    assert summary["n"] == 4
    assert summary["acc"] == pytest.approx(0.5)
    assert summary["ece"] == pytest.approx(0.2425)
    assert summary["brier"] == pytest.approx(0.53115)


def test_torch_inputs_match_numpy() -> None:
    probs = torch.tensor(PROBS, requires_grad=True)
    labels = torch.tensor(LABELS)
    assert summarize(probs, labels) == pytest.approx(summarize(PROBS, LABELS))
    samples = torch.tensor(np.stack([PROBS, PROBS[::-1].copy()]))
    np.testing.assert_allclose(mutual_information(samples), mutual_information(samples.numpy()))
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3])) == 1.0


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        accuracy(PROBS[0], LABELS)
    with pytest.raises(ValueError):
        accuracy(PROBS, LABELS[:3])
    with pytest.raises(ValueError):
        accuracy(PROBS, np.array([0, 1, 1, 3]))
    with pytest.raises(ValueError):
        mutual_information(PROBS)
    with pytest.raises(ValueError):
        auroc([], [1.0])
