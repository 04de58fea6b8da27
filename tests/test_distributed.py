"""Data-parallel SVI: 2 CPU processes (gloo) reproduce 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from conftest import make_questions
from safetensors.torch import load_file, save_file

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.inference.distributed import (
    AccelerateTrainer,
    DistributedConfigError,
    shard,
    wants_accelerate,
)
from bslora_pyro.inference.svi import SVITrainer, TrainConfig
from bslora_pyro.testing import ROUNDING, assert_equal_up_to_rounding

VARIANTS = [("mle", 1), ("bslora", 1), ("bslora", 2)]  # (method, accumulation micro-steps)


def build(kind: str):
    from bslora_pyro.bayesian_lora import BayesianLora
    from bslora_pyro.methods.base import PlainLora
    from bslora_pyro.scoring import ChoiceScorer
    from bslora_pyro.testing import tiny_llama, tiny_tokenizer

    torch.manual_seed(0)
    scorer = ChoiceScorer(tiny_tokenizer(), "choice_loglik")
    adapter = AdapterConfig(r=2, alpha=4.0, target_modules=["q_proj", "v_proj"], layers="-1:")
    if kind == "mle":
        method = PlainLora(tiny_llama(seed=0), scorer, adapter)
    else:
        method = BayesianLora(tiny_llama(seed=0), scorer, adapter, prior="bernoulli")
    with torch.no_grad():  # B away from zero so that the gate draws matter
        for layer in method.adapters.values():
            layer.lora_B.normal_(0.0, 0.5)
    return method


def train_config(accumulation: int = 1) -> TrainConfig:
    return TrainConfig(steps=3, batch_size=8, lr_factors=1e-2, lr_gates=5e-2, warmup_ratio=0.0,
                       num_particles=2, seed=3, grad_accumulation_steps=accumulation)


def run(kind: str, accumulation: int, trainer_cls=AccelerateTrainer):
    method = build(kind)
    examples = make_questions(16, seed=1)
    trainer = trainer_cls(method, method.scorer.encode, train_config(accumulation))
    history = trainer.fit(examples, progress=False)
    params = {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}
    ddp = isinstance(getattr(trainer, "module", None), torch.nn.parallel.DistributedDataParallel)
    return [h["loss"] for h in history], params, ddp


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    for kind, accumulation in VARIANTS:
        losses, params, ddp = run(kind, accumulation)
        if rank == 0:
            tag = f"{kind}-{accumulation}"
            save_file(params, str(Path(out) / f"{tag}.safetensors"))
            (Path(out) / f"{tag}.json").write_text(json.dumps({"losses": losses, "ddp": ddp}))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_two_processes_match_one_process(tmp_path, fresh_accelerate, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    references = {kind: run(kind, 1) for kind in ("mle", "bslora")}
    for kind, accumulation in VARIANTS:
        losses, params, _ = references[kind]
        tag = f"{kind}-{accumulation}"
        record = json.loads((tmp_path / f"{tag}.json").read_text())
        got = load_file(str(tmp_path / f"{tag}.safetensors"))
        assert record["ddp"], "the 2-process run should train through DDP"
        # the workers run 1 thread, this process 2: other summation orders, and DDP's mean
        assert record["losses"] == pytest.approx(losses, rel=ROUNDING["rtol"], abs=ROUNDING["atol"]), tag
        assert got.keys() == params.keys()
        for name, value in params.items():
            assert_equal_up_to_rounding(got[name], value, msg=f"{tag} {name}")
        assert len(set(losses)) == len(losses), "the loss should move"


def test_one_process_accelerate_equals_plain_trainer(fresh_accelerate):
    plain_losses, plain, _ = run("mle", 1, SVITrainer)
    losses, params, _ = run("mle", 1)
    # exact: one process runs the same forward and backward, in the same order and with the
    # same kernels, as the plain trainer; accelerate adds no reduction of its own
    assert losses == plain_losses
    for name, value in plain.items():
        assert torch.equal(params[name], value), name
    accumulated, _, _ = run("bslora", 2)  # 2 micro-steps of 4 = one batch of 8
    assert accumulated == pytest.approx(run("bslora", 1)[0], rel=1e-5)


def test_shard_and_trainer_choice(monkeypatch):
    index = torch.arange(8)
    parts = [shard(index, rank, 2, 2) for rank in range(2)]
    assert torch.equal(torch.cat([p for part in parts for p in part]), index)
    assert [len(p) for p in parts[0]] == [2, 2]
    with pytest.raises(DistributedConfigError, match="divisible"):
        shard(torch.arange(6), 0, 2, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not wants_accelerate(TrainConfig())
    assert wants_accelerate(TrainConfig(mixed_precision="bf16"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wants_accelerate(TrainConfig())


def test_accelerate_trainer_resumes_exactly(tmp_path, fresh_accelerate):
    from bslora_pyro.inference.checkpoint import restore_checkpoint, save_checkpoint

    examples = make_questions(16, seed=1)
    full_losses, full, _ = run("bslora", 2)
    method = build("bslora")
    first = AccelerateTrainer(method, method.scorer.encode, train_config(2))
    first.train_step(examples)
    save_checkpoint(first, tmp_path)
    torch.manual_seed(99)  # per-step seeds: the global RNG state does not matter
    method = build("bslora")
    resumed = AccelerateTrainer(method, method.scorer.encode, train_config(2))
    assert restore_checkpoint(resumed, tmp_path) == 1
    resumed.fit(examples, progress=False)
    # up to rounding, not bit-exact: the scorer's prefix cache starts cold after the resume
    assert resumed.history[-1]["loss"] == pytest.approx(full_losses[-1], rel=ROUNDING["rtol"])
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert_equal_up_to_rounding(p.detach(), full[name], msg=name)
