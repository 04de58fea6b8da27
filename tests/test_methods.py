"""One battery for every trainable method in the registry (tiny Llama, choice_loglik).

Each method is built from the registry, trained a few steps the way the runner does it
(:func:`fit`), then checked for predictive shapes, a falling loss, identical predictions
after save -> load, and one property of its own (:data:`CHECKS`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import make_questions

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.inference.predictive import predict
from bslora_pyro.inference.svi import SVITrainer, TrainConfig
from bslora_pyro.methods import MethodError, available_methods, build_method, method_module
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import assert_equal_up_to_rounding, tiny_llama, tiny_tokenizer

METHODS = [name for name in available_methods() if name != "zero_shot"]
TRAIN = TrainConfig(steps=24, batch_size=8, lr_factors=1e-2, lr_gates=3e-2, warmup_ratio=0.0)
DRAWS = {"mle": 1, "map": 1, "temperature_scaling": 1, "ensemble": 3}  # M at num_samples=4


def build(name: str, options: dict | None = None):
    scorer = ChoiceScorer(tiny_tokenizer(), "choice_loglik")
    adapter = AdapterConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "lm_head"])
    return build_method(name, tiny_llama(seed=0), scorer, adapter, options)


def fit(method, examples, config):
    """What the runner does: the method's own ``fit`` hook (ensemble, temperature scaling)
    or one SVITrainer, then ``fit_posthoc`` on the training set when the method has one."""
    own_fit = getattr(method, "fit", None)
    if own_fit is not None:
        trainers = own_fit(examples, method.scorer.encode, config, progress=False)
    else:
        trainers = [SVITrainer(method, method.scorer.encode, config)]
        trainers[0].fit(examples, progress=False)
    posthoc = getattr(method, "fit_posthoc", None)
    info = posthoc(examples, method.scorer.encode) if posthoc else None
    return trainers, info


@dataclass
class Trained:
    name: str
    method: object
    trainers: list
    info: dict | None
    train: list
    evaluation: list


@pytest.fixture(scope="module", params=METHODS)
def trained(request) -> Trained:
    method = build(request.param)
    train = make_questions(32, seed=3)
    evaluation = [
        dataclasses.replace(ex, uid=f"eval{i}") for i, ex in enumerate(make_questions(12, seed=11))
    ]
    trainers, info = fit(method, train, TRAIN)
    return Trained(request.param, method, trainers, info, train, evaluation)


def test_predictions_are_probabilities(trained):
    method = trained.method
    out = predict(method, trained.evaluation, method.scorer.encode, num_samples=4, progress=False)
    draws = DRAWS.get(trained.name, 4)
    assert out.sample_probs.shape == (draws, 12, 3)
    assert torch.isfinite(out.sample_probs).all() and (out.sample_probs >= 0).all()
    torch.testing.assert_close(out.sample_probs.sum(-1), torch.ones(draws, 12))
    batch = method.scorer.encode(trained.evaluation[:4])
    mean = method.predict_logits(batch, num_samples=4, deterministic=True)
    assert mean.shape == (3 if trained.name == "ensemble" else 1, 4, 3)


def test_training_reduces_the_loss(trained):
    for trainer in trained.trainers:
        losses = [h["loss"] for h in trainer.history]
        assert len(losses) == TRAIN.steps
        first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
        assert last < 0.9 * first, (trained.name, first, last)


def test_save_load_gives_identical_predictions(trained, tmp_path):
    method = trained.method
    method.save(tmp_path)
    loaded = method_module(trained.name).load(tmp_path, tiny_llama(seed=0), method.scorer)
    for deterministic in (False, True):
        a, b = (
            predict(
                m,
                trained.evaluation,
                m.scorer.encode,
                num_samples=4,
                progress=False,
                deterministic=deterministic,
            )
            for m in (method, loaded)
        )
        # exact: the loaded tensors are bit copies and the forward runs the same kernels
        torch.testing.assert_close(a.sample_probs, b.sample_probs, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_is_named(name):
    with pytest.raises(MethodError, match="no_such_option"):
        build(name, {"no_such_option": 1})


# --- one check of its own per method -----------------------------------------------------


def _batch(trained, n=4):
    return trained.method.scorer.encode(trained.train[:n])


def check_mle(trained):
    batch = _batch(trained)
    a, b = (trained.method.predict_logits(batch, num_samples=4) for _ in range(2))
    assert a.shape[0] == 1 and torch.equal(a, b)  # the same forward twice: bit-identical
    assert trained.trainers[0].optimizer.param_groups[0]["weight_decay"] == TRAIN.weight_decay


def check_map(trained):
    assert TRAIN.weight_decay == 0.0
    assert trained.trainers[0].optimizer.param_groups[0]["weight_decay"] == 1e-5


def check_bslora(trained):
    method = trained.method
    gates = method.sample_gates(5)
    assert all(set(g.unique().tolist()) <= {0.0, 1.0} for g in gates.values())
    start = torch.logit(torch.tensor(0.5))
    assert any(not torch.allclose(p, start) for p in method.gate_parameters().values())


def check_mc_dropout(trained):
    batch = _batch(trained)
    draws = trained.method.predict_logits(batch, num_samples=6)
    assert not torch.allclose(draws[0], draws[1])
    mean = [trained.method.predict_logits(batch, deterministic=True) for _ in range(2)]
    assert torch.equal(*mean)
    assert all(layer.lora_dropout.p == 0.1 for layer in trained.method.adapters.values())


def check_ensemble(trained):
    members, trainers = trained.method.members, trained.trainers
    assert len(members) == len(trainers) == 3
    owned = [{id(p) for p in t.parameters()} for t in trainers]
    for k, (member, trainer) in enumerate(zip(members, trainers, strict=True)):
        assert owned[k] == {id(p) for p in member.factor_parameters().values()}
        assert all(owned[k].isdisjoint(owned[j]) for j in range(len(trainers)) if j != k)
        assert trainer.optimizer is not trainers[k - 1].optimizer
        assert trainer.history[-1]["member"] == k
    name = next(iter(trained.method.adapters))
    weights = [m.factor_parameters()[f"{name}.lora_A"] for m in members]
    assert not torch.allclose(weights[0], weights[1]) and not torch.allclose(weights[1], weights[2])
    batch = _batch(trained)
    logits = trained.method.predict_logits(batch)
    torch.testing.assert_close(logits[1], members[1].predict_logits(batch)[0])


def check_blob(trained):
    method = trained.method
    batch = _batch(trained)
    terms = method.training_loss(batch, torch.arange(4), 32, num_draws=3)
    expected = 0.0
    for layer, sigma in zip(method.adapters.values(), method.sigmas().values(), strict=True):
        mu, s, p = layer.lora_A.detach(), sigma.detach(), 0.2
        expected += float((torch.log(p / s) + (s**2 + mu**2) / (2 * p**2) - 0.5).sum())
    assert math.isclose(terms.kl.item(), expected, rel_tol=1e-5)
    # one batched forward of 3 draws == 3 forwards with each draw's A
    draws = method.predict_logits(batch, num_samples=3)
    assert not torch.allclose(draws[0], draws[1])
    sampled = {name: layer.sampled_A for name, layer in method.adapters.items()}
    assert all(
        a.shape == (3, 4, layer.in_features)
        for a, layer in zip(sampled.values(), method.adapters.values(), strict=True)
    )
    for g in range(3):
        method.set_factors({name: a[g] for name, a in sampled.items()})
        with torch.no_grad():
            single = method.scorer.logits(method.backbone, batch, 1)[0]
        assert_equal_up_to_rounding(single, draws[g])


def check_laplace(trained):
    method, info = trained.method, trained.info
    variances = torch.cat([v.flatten() for v in method.posterior_variance().values()])
    assert torch.isfinite(variances).all() and (variances > 0).all()
    assert (torch.cat([h.flatten() for h in method.hessian.values()]) > 0).any()
    best = method.prior_precision
    assert best == info["prior_precision"] and 1e-8 < best < 1e12
    lml = method.log_marginal_likelihood
    assert lml(best) >= max(lml(best * 1.5), lml(best / 1.5))
    scale = 0.5 * sum(v.numel() for v in method.hessian.values()) / best
    assert abs(method.marginal_likelihood_gradient(best)) < 1e-6 * scale
    last = build("laplace", {"subset": "last_layer", "prior_precision": 2.0})
    last.fit_posthoc(trained.train[:4], last.scorer.encode)
    assert set(last.hessian) == {"lm_head.lora_A", "lm_head.lora_B"}
    assert last.prior_precision == 2.0
    check_linearised_predictive(method, trained.evaluation[:3])


def check_linearised_predictive(method, examples):
    """The Jacobian agrees with finite differences, the logit covariance does not depend
    on batching, and the M draws follow N(f(theta*), J Sigma J^T)."""
    assert method.predictive == "linearised" and method.predict_batch_size == 1
    batch = method.scorer.encode(examples)
    mean, jacobian = method.logit_jacobian(batch)
    params = list(method.laplace_parameters().values())
    direction = torch.randn(jacobian.shape[-1], generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()

    def shifted(step: float) -> torch.Tensor:
        offset = 0
        with torch.no_grad():
            for p in params:
                p.add_(step * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            return method.predict_logits(batch, 1, deterministic=True)[0]

    eps = 1e-2
    plus, minus = shifted(eps), shifted(-2 * eps)
    shifted(eps)  # back to theta*
    finite = (plus - minus) / (2 * eps)
    torch.testing.assert_close(jacobian @ direction, finite, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(mean, method.predict_logits(batch, 1, deterministic=True)[0])
    _, covariance = method.logit_distribution(batch)
    for i, example in enumerate(examples):
        _, alone = method.logit_distribution(method.scorer.encode([example]))
        torch.testing.assert_close(covariance[i], alone[0], rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    draws = method.predict_logits(batch, num_samples=4000)
    centred = draws - mean
    empirical = torch.einsum("mbc,mbd->bcd", centred, centred) / len(draws)
    scale = covariance.diagonal(dim1=-2, dim2=-1).max()
    assert scale > 0
    torch.testing.assert_close(empirical, covariance, rtol=0, atol=0.1 * float(scale))
    torch.testing.assert_close(centred.mean(0), torch.zeros_like(mean), rtol=0,
                               atol=0.1 * float(scale.sqrt()))
    check_many_draw_average(method, examples)
    method.predictive = "sample"  # the weight-sampling predictive stays available
    try:
        assert method.predict_batch_size is None
        draws = method.predict_logits(batch, num_samples=3)
        assert draws.shape == (3, *mean.shape) and not torch.allclose(draws[0], draws[1])
    finally:
        method.predictive = "linearised"


def check_many_draw_average(method, examples):
    """With a wide posterior, the predictive is E[softmax f] over many logit draws: it
    does not depend on M (``num_samples`` only sets the draws kept for mutual information)
    and matches an independent 400,000-draw average; an average of M = 10 draws would be
    off by Monte Carlo noise of ~0.1 in probability."""
    saved = method.prior_precision
    method.prior_precision = 1e-4 * saved  # widen the posterior: logit sd of several units
    try:
        batch = method.scorer.encode(examples)
        mean, covariance = method.logit_distribution(batch)
        assert covariance.diagonal(dim1=-2, dim2=-1).min() > 4.0
        few, many = (predict(method, examples, method.scorer.encode, num_samples=m,
                             progress=False) for m in (2, 10))
        assert few.num_samples == 2 and many.num_samples == 10
        torch.testing.assert_close(few.log_probs, many.log_probs, rtol=0, atol=0)
        generator = torch.Generator().manual_seed(123)
        draws = mean.double() + torch.einsum(
            "bcd,sd->sbc", torch.linalg.cholesky(covariance.double()
                                                 + 1e-9 * torch.eye(covariance.shape[-1])),
            torch.randn(400_000, mean.shape[-1], generator=generator, dtype=torch.float64))
        expected = torch.softmax(draws, -1).mean(0).float()
        torch.testing.assert_close(many.probs, expected, rtol=0, atol=5e-3)
    finally:
        method.prior_precision = saved


def check_temperature_scaling(trained):
    method = trained.method
    trained_on, holdout = method.split_training(trained.train)
    calibration = set(method.calibration_uids)
    assert calibration == {ex.uid for ex in holdout} and calibration
    assert calibration <= {ex.uid for ex in trained.train}
    assert calibration.isdisjoint(ex.uid for ex in trained_on)
    assert calibration.isdisjoint(ex.uid for ex in trained.evaluation)
    assert len(trained_on) == 32 - len(holdout) == 29
    # the LoRA never trains on the held-out part
    fresh, seen = build("temperature_scaling"), set()

    def encode(examples):
        seen.update(ex.uid for ex in examples)
        return fresh.scorer.encode(examples)

    fresh.fit(trained.train, encode, dataclasses.replace(TRAIN, steps=8), progress=False)
    assert seen == {ex.uid for ex in trained_on}
    logits, labels, mask = method._holdout_logits(holdout, method.scorer.encode)
    unscaled = torch.nn.functional.cross_entropy(logits, labels).item()
    assert method.temperature.item() > 0 and trained.info["holdout_nll"] <= unscaled + 1e-6


def check_random_mask(trained):
    method = trained.method
    masked = method.num_masked
    assert masked == 2
    method.prepare(6, sample=True)
    for layer in method.adapters.values():
        assert layer.gates.shape == (6, layer.r)
        assert ((layer.gates == 0).sum(-1) == masked).all()
        assert ((layer.gates == 0) | (layer.gates == 1)).all()
    draws = method.predict_logits(_batch(trained), num_samples=6)
    assert not all(torch.allclose(draws[0], d) for d in draws[1:])


CHECKS = {
    "mle": check_mle,
    "map": check_map,
    "bslora": check_bslora,
    "mc_dropout": check_mc_dropout,
    "ensemble": check_ensemble,
    "blob": check_blob,
    "laplace": check_laplace,
    "temperature_scaling": check_temperature_scaling,
    "random_mask": check_random_mask,
}


def test_method_specific_property(trained):
    assert trained.name in CHECKS, f"add a check of its own for method {trained.name!r}"
    CHECKS[trained.name](trained)


@pytest.mark.parametrize("options", [{"predictive": "probit"}, {"subset": "first_layer"}])
def test_laplace_rejects_a_bad_option_value_by_name(options):
    (key, value), = options.items()
    with pytest.raises(MethodError, match=f"laplace.{key} must be one of .*{value}"):
        build("laplace", options)
