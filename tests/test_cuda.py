"""The CUDA subset (``pytest -m cuda``, what ``scripts/gpu_check.sh`` runs on a GPU): gated
layers, the fast paths, bf16 autocast against float32 and a checkpoint round trip on CUDA.

Every CUDA test skips without a CUDA device. The autocast tests also run on the CPU (CPU
autocast), so their tolerance is checked on every machine."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_questions
from test_checkpoint import resumed_after_three_steps
from test_fast_paths import EXAMPLES, build, loss_and_grads, predict

from bslora_pyro.adapter import GatedLoraLinear, GateShapeError
from bslora_pyro.scoring import ChoiceScorer, choice_probabilities

HAS_CUDA = torch.cuda.is_available()
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def cuda_only(test):
    """Mark ``test`` for ``-m cuda`` and skip it without a CUDA device."""
    for mark in CUDA:
        test = mark(test)
    return test


#: float32 on CUDA against float32 on the CPU, or a fast path against the full forward on
#: CUDA: equal in exact arithmetic, but other kernels sum in another order (TF32 is off)
CUDA_FP32 = {"rtol": 1e-4, "atol": 1e-5}
#: bf16 (8 significant bits, unit roundoff 2^-8 = 3.9e-3) against float32 through 4 tiny
#: blocks: choice logits within 0.01 + 1 %, choice probabilities within 0.005, the loss within
#: 1 %, gradient cosine above 0.999 (CPU autocast measured 1.2e-3, 3e-4, 2e-4 and 0.99999)
BF16_LOGITS = {"rtol": 1e-2, "atol": 1e-2}
BF16_PROBS = {"rtol": 0.0, "atol": 5e-3}


@pytest.fixture(autouse=True)
def no_tf32():
    """Keep float32 matrix products in float32 on CUDA, whatever the machine's default."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("gate_shape", [None, (4,), (3, 4)])
@cuda_only
def test_gated_layer_on_cuda_matches_cpu(gate_shape):
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 16).to(torch.bfloat16)
    layer = GatedLoraLinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_(0.0, 0.5)
    x = torch.randn(6, 5, 32).to(torch.bfloat16)
    gates = None if gate_shape is None else torch.rand(gate_shape)

    def run(device: str):
        moved = GatedLoraLinear(copy.deepcopy(base).to(device), r=4, alpha=8.0)
        moved.load_state_dict(layer.state_dict())
        moved.gates = None if gates is None else gates.to(device)
        out = moved(x.to(device))
        out.float().square().sum().backward()
        return out, moved.lora_A.grad, moved.lora_B.grad, moved

    out, grad_a, grad_b, cuda_layer = run("cuda")
    ref, ref_a, ref_b, _ = run("cpu")
    assert out.dtype == torch.bfloat16 and cuda_layer.lora_A.dtype == torch.float32
    assert out.device.type == "cuda" and grad_a.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=1.6e-2, atol=1e-2)  # bf16 outputs: 1 ulp
    torch.testing.assert_close(grad_a.cpu(), ref_a, rtol=2e-2, atol=1e-2)  # via bf16 outputs
    torch.testing.assert_close(grad_b.cpu(), ref_b, rtol=2e-2, atol=1e-2)
    if gate_shape == (3, 4):
        cuda_layer.gates = torch.rand(4, 4, device="cuda")  # 4 groups do not divide 6 rows
        with pytest.raises(GateShapeError):
            cuda_layer(x.cuda())


@pytest.mark.parametrize("mode", ["letter", "choice_loglik"])
@cuda_only
def test_fast_paths_on_cuda_match_full_forward_and_cpu(mode):
    method = build("llama", "2:", mode)
    cpu_scorer = ChoiceScorer(method.scorer.tokenizer, mode, reuse_prefix=False)
    batch = method.scorer.encode(EXAMPLES)
    torch.manual_seed(1)
    gates = method.sample_gates(3)
    on_cpu = predict(method, batch, cpu_scorer, gates, 3)
    method.to("cuda")
    fast = method.scorer
    slow = ChoiceScorer(fast.tokenizer, mode, reuse_prefix=False)
    chunked = ChoiceScorer(fast.tokenizer, mode, draw_chunk_mb=1e-3)  # one draw per forward
    cuda_gates = {k: v.cuda() for k, v in gates.items()}
    expected = predict(method, batch, slow, cuda_gates, 3)
    assert expected.device.type == "cuda"
    assert fast._prefix(method.backbone).start == 2
    for scorer in (fast, fast, chunked):  # the second call reads the prefix cache
        torch.testing.assert_close(predict(method, batch, scorer, cuda_gates, 3), expected,
                                   **CUDA_FP32)
    torch.testing.assert_close(expected.cpu(), on_cpu, **CUDA_FP32)


@cuda_only
def test_training_with_prefix_cache_on_cuda_matches_full_forward():
    method = build("llama", "-1:", "letter").to("cuda")
    batch = method.scorer.encode(EXAMPLES).to("cuda")
    index = torch.arange(len(EXAMPLES), device="cuda")
    method.scorer.reuse_prefix = False
    expected_loss, expected_grads = loss_and_grads(method, batch, index, 10)
    method.scorer.reuse_prefix = True
    for _ in range(2):  # fills the cache, then reads it
        loss, grads = loss_and_grads(method, batch, index, 10)
        torch.testing.assert_close(loss, expected_loss, **CUDA_FP32)
        for got, want in zip(grads, expected_grads, strict=True):
            assert got.device.type == "cuda"
            torch.testing.assert_close(got, want, **CUDA_FP32)


def _bf16_method(device: str):
    """A letter-scored BayesianLora on the top 2 of 4 blocks, without the prefix cache (so
    every forward runs in the precision under test)."""
    scorer = ChoiceScorer(build("llama", None, "letter").scorer.tokenizer, "letter",
                          prefix_cache_mb=0)
    return build("llama", "2:", "letter", scorer=scorer).to(device)


def _fp32_prediction(device: str):
    """That method, a batch, 3 gate draws and their float32 choice logits."""
    method = _bf16_method(device)
    batch = method.scorer.encode(EXAMPLES)
    torch.manual_seed(1)
    gates = {k: v.to(device) for k, v in method.sample_gates(3).items()}
    return method, batch, gates, predict(method, batch, method.scorer, gates, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_prediction_matches_float32(device):
    method, batch, gates, fp32 = _fp32_prediction(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        bf16 = predict(method, batch, method.scorer, gates, 3)
    assert bf16.dtype == torch.float32  # the scorer returns float32 logits either way
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16
    torch.testing.assert_close(bf16, fp32, **BF16_LOGITS)
    torch.testing.assert_close(choice_probabilities(bf16), choice_probabilities(fp32),
                               **BF16_PROBS)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_base_with_float32_adapters_matches_float32(device):
    method, batch, gates, fp32 = _fp32_prediction(device)
    for name, p in method.backbone.named_parameters():
        if ".lora_" not in name:
            p.data = p.data.to(torch.bfloat16)  # the base in bf16, adapters stay float32
    assert all(layer.lora_A.dtype == torch.float32 for layer in method.adapters.values())
    bf16 = predict(method, batch, method.scorer, gates, 3)
    torch.testing.assert_close(bf16, fp32, **BF16_LOGITS)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_training_matches_float32(device):
    method = _bf16_method(device)
    batch = method.scorer.encode(EXAMPLES).to(device)
    index = torch.arange(len(EXAMPLES), device=device)
    loss, grads = loss_and_grads(method, batch, index, 10)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        bf16_loss, bf16_grads = loss_and_grads(method, batch, index, 10)
    torch.testing.assert_close(bf16_loss, loss, rtol=1e-2, atol=1e-2)
    flat = torch.cat([g.flatten() for g in grads])
    bf16_flat = torch.cat([g.flatten() for g in bf16_grads])
    assert bf16_flat.dtype == torch.float32  # float32 adapters get float32 gradients
    assert torch.nn.functional.cosine_similarity(bf16_flat, flat, dim=0) > 0.999


@cuda_only
def test_checkpoint_round_trip_on_cuda(tmp_path):
    examples = make_questions(12)
    full, resumed = resumed_after_three_steps(examples, tmp_path, device="cuda")
    params = resumed.parameters()
    assert all(p.device.type == "cuda" for p in params)
    assert resumed.optimizer.state[params[0]]["exp_avg"].device.type == "cuda"
    resumed.fit(examples, progress=False)
    # same kernels on the same rows; a tolerance only for kernels that sum with atomics
    losses = torch.tensor([h["loss"] for h in resumed.history])
    expected = torch.tensor([h["loss"] for h in full.history])
    torch.testing.assert_close(losses, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(resumed.parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
