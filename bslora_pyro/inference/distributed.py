"""Data-parallel SVI on Hugging Face ``accelerate``: one device, DDP or FSDP, bf16/fp16
autocast and gradient accumulation, with the same global minibatch as one process.

Why the data-plate scaling stays exact. One process with global batch ``B`` minimises
``(N / B) sum_{i in B} nll_i + KL``. With ``P`` processes and ``k`` accumulation micro-steps,
every micro-batch holds ``m = B / (P k)`` examples of that same global batch and its loss is
``(N / m) sum_{i in micro} nll_i + KL`` (the ``data`` plate sees ``num_data = N`` and the
local subsample). ``accelerate`` divides each micro loss by ``k`` and DDP averages gradients
over ``P``, so the update uses ``(1 / (P k)) sum_micro [(N / m) sum grad nll_i + grad KL]
= (N / B) sum_{i in B} grad nll_i + grad KL``: exactly the one-process gradient, with the KL
counted once. Gate draws are reseeded from ``(seed, step)`` before every micro-batch, so
every process and micro-batch uses the single-process draw (exact for
``per_example_masks=False``; per-example draws stay unbiased but differ).

Launch with ``accelerate launch`` (or ``torchrun``); a plain ``python`` run is one process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bslora_pyro.inference.svi import (
    SVITrainer,
    TrainConfig,
    TrainingError,
    after_step,
    batch_indices,
    clip_threshold,
    kl_weight_at,
)


class DistributedConfigError(ValueError):
    """A distributed setting that cannot work (e.g. a batch that does not split evenly)."""


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` set by ``accelerate launch``/``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def local_cuda_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under a launcher, else the current CUDA device."""
    rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(rank)) if rank is not None else torch.device("cuda")


def wants_accelerate(config: TrainConfig) -> bool:
    """True when the run needs the accelerate trainer (several processes, autocast,
    accumulation or FSDP); otherwise the plain :class:`SVITrainer` is used."""
    return (
        world_size() > 1
        or config.mixed_precision != "no"
        or config.grad_accumulation_steps > 1
        or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    )


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of optimizer step ``step`` (identical on every process)."""
    return (seed * 1_000_003 + 7919 * step + 1) % (2**63 - 1)


def shard(index: torch.Tensor, rank: int, processes: int, micro_steps: int) -> list[torch.Tensor]:
    """This process's ``micro_steps`` micro-batches of the global minibatch ``index``."""
    parts = processes * micro_steps
    if len(index) % parts:
        raise DistributedConfigError(
            f"train.batch_size={len(index)} must be divisible by processes x "
            f"train.grad_accumulation_steps = {processes} x {micro_steps} = {parts}"
        )
    chunks = index.view(parts, -1)
    return [chunks[rank * micro_steps + j] for j in range(micro_steps)]


class _LossModule(nn.Module):
    """Wraps a method so the forward (and hence DDP's gradient hooks) runs the ELBO."""

    def __init__(self, method: nn.Module, elbo) -> None:
        super().__init__()
        self.method = method
        self.elbo = elbo
        self.variational = True  # the last forward had latent sites (a KL term)

    def forward(self, batch, index, num_data: int, num_draws: int, per_example: bool):
        terms = self.method.training_loss(
            batch, index, num_data, num_draws, per_example, elbo=self.elbo
        )
        self.variational = bool(terms.kl_by_site)
        return terms.loss, terms.nll, terms.kl


def _ignore_frozen(module: nn.Module) -> None:
    """Keep DDP from broadcasting the frozen backbone (identical on every process)."""
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in module.named_buffers()]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)


def make_accelerator(config: TrainConfig, device: torch.device):
    """An ``Accelerator`` for ``config`` (CPU processes use gloo)."""
    from accelerate import Accelerator

    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise DistributedConfigError("train.mixed_precision=fp16 needs a CUDA device; use bf16")
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accumulation_steps,
        cpu=device.type == "cpu",
    )


class AccelerateTrainer(SVITrainer):
    """:class:`SVITrainer` whose steps run through ``accelerate`` (see the module docstring).

    Checkpoints (``bslora_pyro.inference.checkpoint``) work unchanged under DDP: every
    process holds the full trainable state and only the main process writes. Under FSDP the
    trainable state is sharded and ``supports_checkpoints`` is False.
    """

    def __init__(
        self,
        method: nn.Module,
        encode: Callable[[Sequence], object],
        config: TrainConfig,
        device: torch.device | str = "cpu",
        accelerator=None,
    ) -> None:
        super().__init__(method, encode, config, device)
        from accelerate.utils import DistributedType

        self.accelerator = accelerator or make_accelerator(config, self.device)
        self.device = self.accelerator.device
        self.is_main_process = self.accelerator.is_main_process
        self.processes = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        shard(torch.arange(config.batch_size), 0, self.processes, config.grad_accumulation_steps)
        fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        self.supports_checkpoints = not fsdp
        module = self._loss_module = _LossModule(method, self.elbo)
        if self.processes > 1 and not fsdp:
            _ignore_frozen(module)
        self.module, self.prepared_optimizer = self.accelerator.prepare(
            module, self.optimizer, device_placement=[False, False]
        )

    def _micro_step(self, examples: Sequence, index: torch.Tensor):
        """Forward and backward of one micro-batch; returns its (loss, nll, kl) detached."""
        config, accelerator = self.config, self.accelerator
        batch = self.encode([examples[i] for i in index.tolist()])
        batch = batch.to(self.device) if hasattr(batch, "to") else batch
        torch.manual_seed(step_seed(config.seed, self.step))
        with accelerator.accumulate(self.module):
            loss, nll, kl = self.module(
                batch,
                index.to(self.device),
                len(examples),
                config.num_particles,
                config.per_example_masks,
            )
            if not self._all_finite(loss):
                raise TrainingError(
                    f"loss is not finite at step {self.step + 1} (this process: "
                    f"loss={loss.item()}, nll={nll.item()}, kl={kl.item()}); lower the learning "
                    "rates or check the data"
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                self._clip_and_check(len(examples))
            self.prepared_optimizer.step()
            self.prepared_optimizer.zero_grad(set_to_none=True)
        return loss.detach(), nll.detach(), kl.detach()

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (all stop together, none hangs)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return not bool(bad.item())

    def _clip_and_check(self, num_data: int) -> None:
        norm = self.accelerator.clip_grad_norm_(self.parameters(),
                                                clip_threshold(self.config, num_data))
        fp16 = self.accelerator.scaler is not None  # the scaler skips overflowing steps itself
        if norm is not None and not fp16 and not torch.isfinite(torch.as_tensor(norm)):
            raise TrainingError(
                f"gradient norm is {float(norm)} at step {self.step + 1}; lower the learning rates"
            )

    def train_step(self, examples: Sequence) -> dict:
        """One optimizer step on global minibatch ``step``, split over processes and
        micro-steps; the logged loss is the global-batch loss."""
        config = self.config
        index = batch_indices(len(examples), config.batch_size, self.step, config.seed)
        micro = shard(index, self.rank, self.processes, config.grad_accumulation_steps)
        self.method.set_progress(self.step / config.steps)
        self.elbo.kl_weight = kl_weight_at(config, self.step)
        started = time.perf_counter()
        totals = torch.zeros(3, device=self.device)
        for part in micro:
            totals += torch.stack(self._micro_step(examples, part)).float()
        totals = self.accelerator.reduce(totals / len(micro), reduction="mean")
        self.scheduler.step()
        after_step(self.method, self.step, len(examples), config)
        if not all(torch.isfinite(p.detach()).all() for p in self.parameters()):
            raise TrainingError(f"parameters are not finite after step {self.step + 1}")
        loss, nll, kl = totals.tolist()
        self.variational = self._loss_module.variational
        record = {
            "step": self.step + 1,
            "loss": loss,
            "nll": nll / len(examples),
            "kl": kl,
            "seconds": time.perf_counter() - started,
            **self.method.training_metrics(),
        }
        self.step += 1
        self.history.append(record)
        return record


def build_trainer(
    method, encode: Callable[[Sequence], object], config: TrainConfig, device: torch.device
) -> SVITrainer:
    """:class:`AccelerateTrainer` when :func:`wants_accelerate`, else :class:`SVITrainer`."""
    if wants_accelerate(config) and isinstance(method, nn.Module):
        return AccelerateTrainer(method, encode, config, device)
    return SVITrainer(method, encode, config, device)
