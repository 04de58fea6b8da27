"""Every prior x every guide, the exact gate KLs, and Pyro's own SVI and Predictive.

The mutation tests at the end each fail on one wrong implementation that the rest of the
suite would let through (named in their docstrings)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import make_questions
from pyro import poutine

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.bayesian_lora import BayesianLora, load_posterior
from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.inference.export import export_peft_adapter
from bslora_pyro.inference.predictive import predict, pyro_predictive
from bslora_pyro.inference.svi import SVITrainer, TrainConfig
from bslora_pyro.models import available_guides, available_priors, get_prior
from bslora_pyro.models.base import expected_bernoulli_kl
from bslora_pyro.models.gates import ConcreteGate
from bslora_pyro.models.guides import build_guide
from bslora_pyro.models.guides.autoregressive import AutoregressiveGate
from bslora_pyro.persistence import save_posterior
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import assert_equal_up_to_rounding, tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PRIORS = available_priors()
GUIDES = available_guides()
TARGETS = ["q_proj", "v_proj", "lm_head"]


def build(prior="bernoulli", guide="mean_field", layers="2:", seed=0, **kwargs) -> BayesianLora:
    torch.manual_seed(seed)
    adapter = AdapterConfig(r=3, alpha=6.0, target_modules=TARGETS, layers=layers)
    method = BayesianLora(tiny_llama(num_layers=4, seed=seed),
                          ChoiceScorer(tiny_tokenizer(), "choice_loglik"), adapter,
                          prior=prior, guide=guide, **kwargs)
    with torch.no_grad():  # B away from zero so that gates change the output
        for layer in method.adapters.values():
            layer.lora_B.normal_(0.0, 0.5)
    return method


@pytest.fixture(scope="module")
def questions():
    return make_questions(12)


@pytest.mark.parametrize("guide", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_and_guide_trains_predicts_saves_and_exports(prior, guide, questions,
                                                                 tmp_path):
    method = build(prior, guide)
    trainer = SVITrainer(method, method.scorer.encode,
                         TrainConfig(steps=3, batch_size=4, lr_factors=1e-2, lr_gates=5e-2,
                                     num_particles=2))
    start = {k: v.detach().clone() for k, v in method.gate_parameters().items()}
    history = trainer.fit(questions, progress=False)
    assert all(math.isfinite(h["loss"]) for h in history)
    moved = [k for k, v in method.gate_parameters().items() if not torch.equal(v, start[k])]
    assert moved, "no variational parameter was trained"
    batch = method.scorer.encode(questions[:5])
    logits = method.predict_logits(batch, num_samples=4)
    assert logits.shape == (4, 5, 3) and torch.isfinite(logits).all()
    # save -> load: the same predictions, bit for bit
    save_posterior(method, tmp_path / "posterior")
    loaded = load_posterior(tmp_path / "posterior", tiny_llama(num_layers=4, seed=0),
                            method.scorer)
    assert type(loaded.gate_guide) is type(method.gate_guide)
    a = predict(method, questions[:6], method.scorer.encode, num_samples=4, progress=False)
    b = predict(loaded, questions[:6], loaded.scorer.encode, num_samples=4, progress=False)
    torch.testing.assert_close(a.sample_probs, b.sample_probs, rtol=0, atol=0)  # same kernels
    # export: a PEFT adapter with the posterior-mean gates loads back
    from peft import PeftModel

    export_peft_adapter(method, tmp_path / "peft", threshold=0.0, task_type=None)
    method.set_gates(method.posterior_mean_gates())
    with torch.no_grad():
        expected = method.scorer.logits(method.backbone, batch, 1)[0]
        peft_model = PeftModel.from_pretrained(tiny_llama(num_layers=4, seed=0), tmp_path / "peft")
        got = method.scorer.logits(peft_model.base_model.model, batch, 1)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_posteriors_saved_before_guides_were_objects_load_as_mean_field(tmp_path):
    import json

    method = build("beta_bernoulli", "mean_field")
    save_posterior(method, tmp_path)
    config = json.loads((tmp_path / "posterior.json").read_text())
    config["guide"] = {"temperature": 0.5, "temperature_final": None, "straight_through": True,
                       "pi_family": "beta"}  # the version-1 form: GuideConfig fields
    (tmp_path / "posterior.json").write_text(json.dumps(config))
    loaded = load_posterior(tmp_path, tiny_llama(num_layers=4, seed=0), method.scorer)
    assert loaded.gate_guide.name == "mean_field" and loaded.gate_guide.straight_through


@pytest.mark.parametrize("guide", GUIDES)
def test_guides_start_at_the_prior(guide):
    """KL(q || p) of the paper's prior is 0 at initialisation for every guide."""
    method = build("bernoulli", guide)
    batch = method.scorer.encode(make_questions(4))
    terms = method.training_loss(batch, torch.arange(4), 20, num_draws=2)
    assert abs(terms.kl.item()) < 1e-5


def test_amortized_gates_depend_on_the_input_and_their_kl_is_per_example():
    method = build("bernoulli", "amortized")
    with torch.no_grad():
        method.gate_guide.readout.weight.normal_(0.0, 1.0)
    questions = make_questions(6)
    batch = method.scorer.encode(questions)
    probs = method.inclusion_probs(batch)["lm_head"]
    assert probs.shape == (6, 3) and not torch.allclose(probs[0], probs[1])
    gates = method.sample_gates(5, batch)["lm_head"]
    assert gates.shape == (5 * 6, 3) and set(gates.unique().tolist()) <= {0.0, 1.0}
    # the gate KL is a sum over examples scaled to the data set: N / B times the batch's
    terms = method.training_loss(batch, torch.arange(6), 60, num_draws=1)
    per_example = sum(
        expected_bernoulli_kl(method.gate_guide.gate_distribution(m, method._features(batch)),
                              *method.prior.expected_log_probs(m, {})).sum()
        for m in method.adapters
    )
    assert terms.kl.item() == pytest.approx(per_example.item() * 60 / 6, rel=1e-5)


def test_amortized_features_do_not_depend_on_batch_mates_or_packing():
    """A question's features are the same alone, in a packed batch and unpacked (an
    average over all packed tokens would count the shared context once instead of C
    times, about a 9 % difference)."""
    method = build("bernoulli", "amortized")  # blocks 0-1 frozen: features from the prefix
    questions = make_questions(6, seed=5)
    scorer = method.scorer
    batch = scorer.encode(questions)
    assert scorer._plan(method.backbone, batch).packed is not None  # this batch is packed
    together = method._features(batch)
    alone = torch.cat([method._features(scorer.encode([q])) for q in questions])
    scorer.share_context = False
    try:
        unpacked = method._features(scorer.encode(questions[::-1])).flip(0)
    finally:
        scorer.share_context = True
    assert_equal_up_to_rounding(together, alone)
    assert_equal_up_to_rounding(together, unpacked)


def test_amortized_feature_mean_is_saved_checkpointed_and_restored(questions, tmp_path):
    from bslora_pyro.inference.checkpoint import restore_checkpoint, save_checkpoint

    method = build("bernoulli", "amortized")
    with torch.no_grad():
        method.gate_guide.readout.weight.normal_(0.0, 1.0)
    config = TrainConfig(steps=3, batch_size=4, lr_factors=1e-2, warmup_ratio=0.0)
    trainer = SVITrainer(method, method.scorer.encode, config)
    trainer.fit(questions, progress=False)
    mean = method.gate_guide.feature_mean.clone()
    assert mean.abs().sum() > 0  # training moved it
    save_posterior(method, tmp_path / "posterior")
    save_checkpoint(trainer, tmp_path / "checkpoint")
    loaded = load_posterior(tmp_path / "posterior", tiny_llama(num_layers=4, seed=0),
                            method.scorer)
    torch.testing.assert_close(loaded.gate_guide.feature_mean, mean, rtol=0, atol=0)
    for name, p in method.inclusion_probs().items():
        torch.testing.assert_close(loaded.inclusion_probs()[name], p)
    fresh = build("bernoulli", "amortized")
    resumed = SVITrainer(fresh, fresh.scorer.encode, config)
    restore_checkpoint(resumed, tmp_path / "checkpoint")
    torch.testing.assert_close(fresh.gate_guide.feature_mean, mean, rtol=0, atol=0)


def test_autoregressive_gate_marginals_entropy_and_kl_are_exact():
    torch.manual_seed(0)
    logits, weights = torch.randn(4), torch.randn(4, 4)
    q = AutoregressiveGate(0.5, logits, weights)
    draws = AutoregressiveGate(0.5, logits, weights, hard=True).sample((100_000,))
    torch.testing.assert_close(q.inclusion_probs(), draws.mean(0), atol=0.01, rtol=0)
    log_q = q.log_prob(draws)
    assert q.discrete_entropy().item() == pytest.approx(-log_q.mean().item(), abs=0.02)
    prior = dist.Bernoulli(probs=torch.full((4,), 0.3)).to_event(1)
    kl = torch.distributions.kl_divergence(q, prior)
    assert kl.item() == pytest.approx((log_q - prior.log_prob(draws)).mean().item(), abs=0.02)
    assert torch.allclose(AutoregressiveGate(0.5, logits, torch.zeros(4, 4)).inclusion_probs(),
                          torch.sigmoid(logits))  # W = 0: independent gates


def test_beta_bernoulli_gate_kl_is_the_exact_expectation_over_q_pi():
    prior = get_prior("beta_bernoulli")({"m": 4}, a=0.5, b=4.5)
    guide = build_guide("mean_field", prior)
    with torch.no_grad():
        guide.gate_logits["m"].copy_(torch.tensor([2.0, -1.0, 0.3, -3.0]))
        guide.pi_a__m.copy_(torch.tensor([0.1, 1.0, 2.0, -1.0]))
        guide.pi_b__m.copy_(torch.tensor([1.0, 0.2, -0.5, 2.0]))
    q_pi = guide.latent_distribution(prior.latent_sites()[0])
    exact = expected_bernoulli_kl(guide.gate_distribution("m"),
                                  *prior.expected_log_probs("m", {"m/pi": q_pi}))
    pi = q_pi.sample((400_000,))
    q = torch.sigmoid(guide.gate_logits["m"]).detach()
    sampled = (q * (q.log() - pi.log()) + (1 - q) * ((1 - q).log() - (1 - pi).log())).sum(-1)
    assert exact.item() == pytest.approx(sampled.mean().item(), abs=4 * sampled.std().item() / 632)


def test_stick_breaking_gate_kl_has_no_monte_carlo_noise_and_matches_sampling():
    prior = get_prior("stick_breaking")({"m": 5}, alpha0=3.0)
    guide = build_guide("mean_field", prior)
    q_v = guide.latent_distribution(prior.latent_sites()[0])
    one, two = (prior.expected_log_probs("m", {"m/v": q_v}) for _ in range(2))
    assert torch.equal(one[1], two[1])  # deterministic
    pi = torch.cumprod(q_v.sample((400_000,)), -1).clamp(max=1 - 1e-7)
    torch.testing.assert_close(one[0], pi.log().mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(one[1], torch.log1p(-pi).mean(0), atol=0.01, rtol=0)


# ---------------------------------------------------------------------- Pyro-native driving


def test_pyro_svi_gives_the_library_loss_at_step_zero_and_trains(questions):
    """``pyro.infer.SVI`` with ``pyro.optim`` drives the model and guide directly."""
    pyro.clear_param_store()
    method = build("beta_bernoulli", "mean_field")
    batch = method.scorer.encode(questions[:4])
    index = torch.arange(4)
    args = (batch, index, len(questions), 2)
    torch.manual_seed(7)
    library = method.training_loss(*args).loss.item()
    svi = pyro.infer.SVI(method.model, method.guide, pyro.optim.Adam({"lr": 0.05}), ExactELBO())
    torch.manual_seed(7)
    assert svi.evaluate_loss(*args) == pytest.approx(library, rel=1e-5, abs=1e-5)
    factors = {k: v.detach().clone() for k, v in method.factor_parameters().items()}
    gates = {k: v.detach().clone() for k, v in method.gate_parameters().items()}
    for _ in range(40):
        svi.step(*args)
    torch.manual_seed(7)
    assert svi.evaluate_loss(*args) < library  # the same draws, after training
    assert any(not torch.equal(v, factors[k]) for k, v in method.factor_parameters().items())
    assert any(not torch.equal(v, gates[k]) for k, v in method.gate_parameters().items())


@pytest.mark.parametrize("guide", ["mean_field", "amortized"])
def test_pyro_predictive_returns_the_per_draw_probabilities_of_predict_logits(guide):
    """Predictive runs the guide and model more than once (it infers shapes first), so
    the draws are made near-certain (q = 0 or 1 per rank) to compare the numbers."""
    method = build("bernoulli", guide)
    with torch.no_grad():
        for logits in method.gate_guide.gate_logits.values():
            logits.copy_(20.0 * torch.sign(torch.randn_like(logits)))
    batch = method.scorer.encode(make_questions(5))
    expected = torch.softmax(method.predict_logits(batch, num_samples=6), -1)
    got = pyro_predictive(method, batch, num_samples=6)
    assert got.shape == (6, 5, 3)
    assert_equal_up_to_rounding(got, expected)


def test_the_documented_pyro_svi_example_runs(tmp_path):
    from tiny_run import save_tiny_model, write_arc

    sys.path.insert(0, str(ROOT / "experiments"))
    import pyro_native_svi

    model = save_tiny_model(tmp_path / "model")
    data = write_arc(tmp_path / "data", n=16)
    losses = pyro_native_svi.main(pyro_native_svi.parse_args(
        ["--model", str(model), "--data-dir", str(data), "--questions", "16", "--steps", "80"]))
    assert sum(losses[-20:]) < 0.8 * sum(losses[:20])


# ---------------------------------------------------------------------- mutation tests


class _FixedDraws:
    """A method whose M draws give fixed, very different logits."""

    stochastic = True

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def predict_logits(self, batch, num_samples=1, deterministic=False):
        return self.logits[:, : batch.labels.shape[0]]


class _Batch:
    def __init__(self, n: int) -> None:
        self.labels = torch.zeros(n, dtype=torch.long)
        self.choice_mask = torch.ones(n, 3, dtype=torch.bool)


def test_predictive_averages_probabilities_not_logits():
    """Fails when the model average is softmax(mean logits) or exp(mean log-probs)."""
    logits = torch.tensor([[[8.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])  # two draws, one question
    preds = predict(_FixedDraws(logits), [0], lambda ex: _Batch(len(ex)), progress=False)
    expected = torch.softmax(logits, -1).mean(0)  # [0.67, 0.17, 0.17]
    torch.testing.assert_close(preds.probs, expected)
    geometric = torch.softmax(torch.log_softmax(logits, -1).mean(0), -1)  # [0.96, 0.02, 0.02]
    assert not torch.allclose(preds.probs, geometric, atol=0.1)
    assert not torch.allclose(preds.probs, torch.softmax(logits.mean(0), -1), atol=0.1)


@pytest.mark.parametrize("guide", GUIDES)
def test_prediction_uses_exact_hard_gates(guide, questions):
    """Fails when prediction draws relaxed (Concrete) gates instead of 0/1 gates."""
    method = build("beta_bernoulli", guide)
    seen = []
    for layer in method.adapters.values():
        layer.register_forward_pre_hook(lambda mod, args: seen.append(mod.gates.clone()))
    method.predict_logits(method.scorer.encode(questions[:4]), num_samples=5)
    assert seen and all(set(g.unique().tolist()) <= {0.0, 1.0} for g in seen)
    seen.clear()
    method.training_loss(method.scorer.encode(questions[:4]), torch.arange(4), 12)
    if guide not in ("straight_through",):  # training does use relaxed gates
        assert any(not set(g.unique().tolist()) <= {0.0, 1.0} for g in seen)


def _latent_site(trace, suffix: str):
    return next(site for name, site in trace.nodes.items() if name.endswith(suffix))


@pytest.mark.parametrize("prior", ["beta_bernoulli", "hierarchical_beta"])
def test_beta_prior_parameters_are_not_swapped(prior):
    """Fails when a Beta(a, b) prior is built as Beta(b, a) anywhere (model, marginal, guide
    start, exact KL): invisible at a = b, so a = 0.5, b = 4.5 here."""
    cls = get_prior(prior)
    modules = {"model.layers.0.q": 4, "model.layers.0.v": 4}
    p = cls(modules, a=0.5, b=4.5)
    with pyro.plate("gate_draws", 20_000, dim=-1):
        trace = poutine.trace(p.model).get_trace(pyro.plate("inner", 1, dim=-2))
    site = _latent_site(trace, "/pi")
    assert site["fn"].mean.mean().item() == pytest.approx(0.1, abs=1e-6)
    gates = trace.nodes["model.layers.0.q"]["value"]
    assert gates.mean().item() == pytest.approx(0.1, abs=0.01)
    assert all(torch.allclose(v, torch.tensor(0.1)) for v in p.prior_inclusion_probs().values())
    guide = build_guide("mean_field", p)
    q = guide.latent_distribution(p.latent_sites()[0])
    assert q.mean.mean().item() == pytest.approx(0.1, abs=1e-5)
    log_p1, log_p0 = p.expected_log_probs("model.layers.0.q", {p.latent_sites()[0].name: q})
    draws = q.sample((200_000,))
    assert log_p1.mean().item() == pytest.approx(draws.log().mean().item(), abs=0.02)
    assert log_p0.mean().item() == pytest.approx(torch.log1p(-draws).mean().item(), abs=0.02)


def test_stick_breaking_takes_the_cumulative_product():
    """Fails when pi_k is v_k instead of prod_{j<=k} v_j (model, marginal or exact KL)."""
    p = get_prior("stick_breaking")({"m": 4}, alpha0=2.0)
    v = torch.tensor([0.9, 0.5, 0.8, 0.4])
    conditioned = poutine.condition(p.model, data={"m/v": v})
    trace = poutine.trace(conditioned).get_trace(pyro.plate("draws", 1, dim=-1))
    probs = trace.nodes["m"]["fn"].base_dist.probs
    torch.testing.assert_close(probs.reshape(-1), torch.cumprod(v, 0))
    torch.testing.assert_close(p.prior_inclusion_probs()["m"],
                               (2.0 / 3.0) ** torch.arange(1.0, 5.0))
    q = build_guide("mean_field", p).latent_distribution(p.latent_sites()[0])
    log_pi, _ = p.expected_log_probs("m", {"m/v": q})
    torch.testing.assert_close(log_pi, torch.cumsum(torch.digamma(q.concentration1)
                                                    - torch.digamma(q.concentration1
                                                                    + q.concentration0), 0))


def test_a_group_level_site_is_counted_once_in_the_kl():
    """Fails when the KL of one inclusion probability per layer is counted once per module
    of that layer (here: 2 modules in each of 2 adapted layers)."""
    method = build("hierarchical_beta", "mean_field", layers="2:", prior_kwargs={"a": 2.0,
                                                                                 "b": 3.0})
    guide = method.gate_guide
    with torch.no_grad():
        for name, param in guide.named_parameters():
            if name.startswith("pi_"):
                param.add_(1.5)
    groups = [s for s in method.prior.latent_sites() if len(s.modules) > 1]
    assert len(groups) == 2 and all(len(s.modules) == 2 for s in groups)  # q, v per layer
    batch = method.scorer.encode(make_questions(4))
    terms = method.training_loss(batch, torch.arange(4), 8, num_draws=3)
    latent_names = {s.name for s in method.prior.latent_sites()}
    assert latent_names <= set(terms.kl_by_site)
    for site in method.prior.latent_sites():
        q = guide.latent_distribution(site)
        closed = torch.distributions.kl_divergence(q, dist.Beta(site.a, site.b)).sum()
        assert terms.kl_by_site[site.name].item() == pytest.approx(closed.item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(sum(v.item() for v in terms.kl_by_site.values()))


def test_concrete_gate_relaxes_and_hard_gates_are_binary():
    gate = ConcreteGate(0.5, torch.zeros(6))
    soft = gate.rsample((50,))
    assert ((soft > 0) & (soft < 1)).float().mean() > 0.9
    assert set(ConcreteGate(0.5, torch.zeros(6), hard=True).sample((50,)).unique().tolist()) \
        <= {0.0, 1.0}
