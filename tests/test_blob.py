"""BLoB (``bslora_pyro.methods.blob``): sigma = rho^2 from BLoB's init and learned, the
closed-form KL, per-example draws, BLoB's separate KL step, M-draw prediction, save/load."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import make_questions
from torch.distributions import Normal, kl_divergence

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.inference.predictive import predict
from bslora_pyro.inference.svi import SVITrainer, TrainConfig, linear_schedule
from bslora_pyro.methods import MethodError, build_method
from bslora_pyro.methods.base import METHOD_CONFIG
from bslora_pyro.methods.blob import BlobOptions, kl_epoch_weight, load
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import assert_equal_up_to_rounding, tiny_llama, tiny_tokenizer

ADAPTER = AdapterConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "lm_head"])


def build(options: dict | None = None, seed: int = 0):
    scorer = ChoiceScorer(tiny_tokenizer(), "choice_loglik")
    method = build_method("blob", tiny_llama(seed=0), scorer, ADAPTER, options)
    torch.manual_seed(seed)
    return method


def randomise_b(method, seed: int = 1) -> None:
    """Nonzero B, so that A's draws reach the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.adapters.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))


def rhos(method) -> torch.Tensor:
    return torch.cat([rho.detach().flatten() for rho in method.lora_A_rho])


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_sigma_is_rho_squared_from_blobs_init(eps):
    method = build({"eps": eps})
    rho = rhos(method)
    assert rho.min() >= eps / math.sqrt(2) and rho.max() <= eps
    assert rho.std() > 0  # uniform draws, not a constant
    for sigma, r in zip(method.sigmas().values(), method.lora_A_rho, strict=True):
        torch.testing.assert_close(sigma, r.square(), rtol=0, atol=0)
    assert "variational" in [g["name"] for g in method.param_groups(1e-3, 1e-2)]


@pytest.mark.parametrize("kl_lr", [0.0, 0.01], ids=["exact_elbo", "kl_step"])
def test_sigma_moves_tenfold_within_200_steps(kl_lr):
    """Under the real objective on a tiny Llama with a large learning rate sigma is free: it
    changes by more than 10x in at most 200 steps (sigma = softplus(rho) from 0.05 or a
    frozen rho does not)."""
    method = build({"kl_lr": kl_lr})
    start = method.training_metrics()["sigma_mean"]
    config = TrainConfig(steps=200, batch_size=8, lr_factors=1e-2, warmup_ratio=0.0)
    trainer = SVITrainer(method, method.scorer.encode, config)

    def stop_when_moved(trainer, record):
        ratio = record["sigma_mean"] / start
        trainer.stop_requested = ratio > 10 or ratio < 0.1

    trainer.fit(make_questions(32, seed=3), progress=False, on_step=stop_when_moved)
    ratio = trainer.history[-1]["sigma_mean"] / start
    assert ratio > 10 or ratio < 0.1, (trainer.step, ratio)


def test_kl_is_the_closed_form_normal_kl():
    method = build()
    with torch.no_grad():  # move rho and the means off their init
        for rho, layer in zip(method.lora_A_rho, method.adapters.values(), strict=True):
            rho.mul_(torch.linspace(0.5, 3.0, rho.numel()).view_as(rho))
            layer.lora_A.add_(0.05)
    expected = sum(
        kl_divergence(Normal(layer.lora_A, sigma), Normal(0.0, 0.2)).sum()
        for layer, sigma in zip(method.adapters.values(), method.sigmas().values(), strict=True)
    )
    questions = make_questions(4)
    batch = method.scorer.encode(questions)
    for per_example, draws in ((True, 3), (False, 2)):
        terms = method.training_loss(batch, torch.arange(4), 32, num_draws=draws,
                                     per_example=per_example)
        assert terms.kl.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.kl().item() == pytest.approx(expected.item(), rel=1e-5)


def _draw_logits(method, per_example: bool) -> torch.Tensor:
    """The logits ``[draws, B, C]`` of one training draw of the guide."""
    batch = method.scorer.encode([make_questions(1)[0]] * 4)  # one question, four times
    model_trace, _ = ExactELBO()._get_trace(
        method.model, method.guide, (batch, torch.arange(4), 16, 2, per_example), {}
    )
    return model_trace.nodes["_RETURN"]["value"].detach()


def test_per_example_draws_differ_across_examples():
    method = build()
    randomise_b(method)
    logits = _draw_logits(method, per_example=False)  # the option's default asks for it
    layer = next(iter(method.adapters.values()))
    assert layer.sampled_A.shape == (2 * 4, layer.r, layer.in_features)
    for d in range(2):
        for i in range(1, 4):
            assert not torch.allclose(logits[d, 0], logits[d, i], atol=1e-4)
    method.per_example = False  # one A per draw: the four copies score alike
    shared = _draw_logits(method, per_example=False)
    assert layer.sampled_A.shape == (2, layer.r, layer.in_features)
    assert_equal_up_to_rounding(shared[:, 1:], shared[:, :1].expand(-1, 3, -1))
    assert not torch.allclose(shared[0], shared[1], atol=1e-4)


def test_prediction_averages_m_draws():
    method = build()
    randomise_b(method)
    questions = make_questions(6, seed=5)
    out = predict(method, questions, method.scorer.encode, num_samples=10, progress=False)
    assert out.sample_probs.shape == (10, 6, 3)
    torch.testing.assert_close(out.probs, out.sample_probs.mean(0))
    assert all(not torch.allclose(out.sample_probs[0], p) for p in out.sample_probs[1:])
    layer = next(iter(method.adapters.values()))
    assert layer.sampled_A.shape == (10, layer.r, layer.in_features)
    mean = predict(method, questions, method.scorer.encode, num_samples=10, progress=False,
                   deterministic=True)
    assert mean.sample_probs.shape == (1, 6, 3) and layer.sampled_A is None


def test_separate_kl_step_is_blobs_sgd_step_on_the_kl():
    method = build({"kl_lr": 0.01})
    batch = method.scorer.encode(make_questions(4))
    terms = method.training_loss(batch, torch.arange(4), 40, num_draws=1)
    assert terms.kl.item() > 0
    assert terms.loss.item() == pytest.approx(terms.nll.item(), rel=1e-6)  # no KL in the loss
    config = TrainConfig(steps=100, batch_size=4, warmup_ratio=0.1)
    step = 23  # past warm-up; step 4 of an epoch of M = 10
    mus = [layer.lora_A.detach().clone() for layer in method.adapters.values()]
    rho = [r.detach().clone() for r in method.lora_A_rho]
    method.after_step(step, 40, config)
    lr = 0.01 * linear_schedule(100, 0.1)(step) * 2.0**4 / (2.0**11 - 1)
    p2 = 0.2**2
    for layer, mu, new, r in zip(method.adapters.values(), mus, method.lora_A_rho, rho,
                                 strict=True):
        # d KL / d mu = mu / p^2;  d KL / d rho = 2 rho^3 / p^2 - 2 / rho  (sigma = rho^2)
        torch.testing.assert_close(layer.lora_A.detach(), mu - lr * mu / p2)
        torch.testing.assert_close(new.detach(), r - lr * (2 * r**3 / p2 - 2 / r))


def test_trainer_takes_the_kl_step_after_each_optimizer_step():
    """With the AdamW learning rate at 0 only the KL step moves anything: one epoch of it
    raises every rho (towards the prior's std) and shrinks every mean."""
    method = build({"kl_lr": 0.01})
    rho, mus = rhos(method), [layer.lora_A.detach().clone() for layer in method.adapters.values()]
    config = TrainConfig(steps=4, batch_size=8, lr_factors=0.0, warmup_ratio=0.0)
    SVITrainer(method, method.scorer.encode, config).fit(make_questions(32), progress=False)
    assert (rhos(method) > rho).all()
    for layer, mu in zip(method.adapters.values(), mus, strict=True):
        assert (layer.lora_A.abs() < mu.abs()).all()


@pytest.mark.parametrize("geometric", [True, False])
@pytest.mark.parametrize("num_data", [40, 41, 20_000])
def test_kl_weights_sum_to_one_per_epoch(geometric, num_data):
    m = math.ceil(num_data / 4)
    weights = [kl_epoch_weight(s, num_data, 4, geometric) for s in range(m, 2 * m)]
    # BLoB's geometric weights sum to 1 - 1 / (2^(M+1) - 1), the uniform ones to 1
    total = 1.0 - 2.0 ** -(m + 1) / (1.0 - 2.0 ** -(m + 1)) if geometric else 1.0
    assert sum(weights) == pytest.approx(total, rel=1e-9)
    assert all(math.isfinite(w) and w >= 0 for w in weights)
    if geometric:
        assert weights == sorted(weights) and weights[-1] == pytest.approx(0.5, rel=1e-3)


def test_save_load_round_trips_rho_and_refuses_the_softplus_format(tmp_path):
    method = build({"eps": 0.1, "kl_lr": 0.02, "per_example": False})
    with torch.no_grad():
        for rho in method.lora_A_rho:
            rho.mul_(1.7)
    method.save(tmp_path / "run")
    loaded = load(tmp_path / "run", tiny_llama(seed=0), method.scorer)
    torch.testing.assert_close(rhos(loaded), rhos(method), rtol=0, atol=0)
    assert (loaded.kl_lr, loaded.per_example) == (0.02, False)
    # a run saved with sigma = softplus(rho): its options name sigma_init, its state no form
    config = json.loads((tmp_path / "run" / METHOD_CONFIG).read_text())
    config["options"] = {"prior_std": 0.2, "sigma_init": 0.05}
    config["state"] = {}
    (tmp_path / "run" / METHOD_CONFIG).write_text(json.dumps(config))
    with pytest.raises(MethodError, match=r"sigma = softplus\(rho\).*sigma_init") as error:
        load(tmp_path / "run", tiny_llama(seed=0), method.scorer)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"prior_std": 0.0}, "method_options.prior_std must be a positive number"),
     ({"eps": -0.05}, "method_options.eps must be a positive number"),
     ({"kl_lr": -1.0}, "method_options.kl_lr must be a non-negative number"),
     ({"sigma_init": 0.05}, "no option 'sigma_init'")],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(MethodError, match=message):
        build(options)


def test_options_are_saved_as_the_dataclass():
    method = build({"eps": 0.07})
    assert method.options == {"prior_std": 0.2, "eps": 0.07, "per_example": True, "kl_lr": 0.0,
                              "kl_reweighting": True}
    assert set(method.options) == {f.name for f in dataclasses.fields(BlobOptions)}
