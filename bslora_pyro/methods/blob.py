"""BLoB: a Gaussian posterior on the LoRA factor A, B deterministic, as a Pyro model/guide.

Model: per adapted module m, ``A_m ~ N(0, prior_std^2)`` elementwise (one site, event
``[r, in]``), then the answers. Guide: ``A_m ~ N(mu_m, sigma_m^2)`` elementwise with
``sigma_m = rho_m^2``: ``mu_m`` is the layer's ``lora_A`` (the usual LoRA Kaiming-uniform
init, B = 0) and ``rho_m`` starts uniform in ``[eps / sqrt(2), eps]``, so ``sigma`` starts
in ``[eps^2 / 2, eps^2]`` (``[0.00125, 0.0025]`` at ``eps = 0.05``) and is learned. Through
the square a step of ``delta`` in ``rho`` changes ``sigma`` by ``2 rho delta``: relative to
``sigma`` that is ``2 delta / rho``, large while ``sigma`` is small, so ``sigma`` can move by
orders of magnitude within a run (a softplus at 0.05 would move by about ``delta``).

Objective (default): our :class:`ExactELBO`, the likelihood scaled to the dataset by the
``data`` plate plus the closed-form Normal-Normal KL once per step, no KL weight, all
minimised by the trainer's one AdamW (``rho`` in a ``variational`` group at ``lr_factors``
without weight decay; the reference code's AdamW also moves ``rho`` at the factors' rate).

``kl_lr > 0`` is BLoB's own split instead: the trainer's AdamW sees only the NLL, and after
each step :meth:`BlobLora.after_step` takes one plain SGD step on ``pi_t * KL`` for the means
and ``rho`` at ``kl_lr`` times the trainer's warm-up/decay factor (the reference scripts use
0.01). ``pi_t`` spreads the KL over an epoch of ``M = ceil(N / batch_size)`` steps: BLoB's
geometric weights ``pi_i = 2^i / (2^(M+1) - 1)`` for step ``i = 1..M`` of the epoch
(``kl_reweighting``, as its scripts run), else ``1 / M``. This is not the ELBO: the NLL goes
through Adam's per-parameter scaling and the KL through SGD, so their balance depends on the
two learning rates rather than on the dataset size, and most of an epoch's KL lands in its
last few steps.

Draws: training uses one independent A per question and draw (``per_example``, default;
``sampled_A`` ``[S * B, r, in]``), the exact version of what flipout approximates (BLoB
decorrelates the noise with random sign flips per token, which also lets the weights differ
between the tokens of one question). At r = 8 it is cheap: the per-group ``bmm`` does the
shared matmul's FLOPs. Measured with ``benchmarks/blob_draws.py`` (median of interleaved
rounds, batch 8, one thread on a loaded 2-core CPU, two runs): forward + backward of one
576 -> 576 layer on 8 x 128 tokens costs 0.97-1.09x one shared A (flipout: 1.61-1.72x); a
whole training step costs 1.01-1.08x on a random-init Llama with SmolLM2-135M's shapes (4
blocks; q_proj, v_proj, lm_head adapted) and 0.92-1.06x on the tiny test Llama, i.e. within
the noise of the machine.
``per_example: false`` draws one A per draw for the whole batch (unless
``train.per_example_masks`` asks for per-example draws). Training draws ``S =
train.num_particles`` (1 is BLoB's setting); prediction draws ``M = predict.num_samples``
(BLoB uses 10), one A per draw shared by the batch's questions, or uses the mean A when
deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from bslora_pyro.inference.elbo import ExactELBO
from bslora_pyro.inference.svi import linear_schedule
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import (
    METHOD_CONFIG,
    MethodOptions,
    PlainLora,
    load_method,
    take_options,
)
from bslora_pyro.typed import NonNegativeFloat, PositiveFloat

NAME = "blob"
#: ``state_extra`` marker of the saved parameterisation (runs without it cannot be read)
SIGMA_FORM = "rho^2"


@dataclass
class BlobOptions(MethodOptions):
    """BLoB's settings (its reference values are the defaults).

    ``prior_std``: std of the N(0, prior_std^2) prior on every element of A (0.2).
    ``eps``: ``rho`` starts uniform in ``[eps / sqrt(2), eps]``, ``sigma = rho^2`` (0.05).
    ``per_example``: an independent A per question and draw in training (True).
    ``kl_lr``: 0 trains the exact ELBO with one optimizer; > 0 takes BLoB's separate SGD step
    on the KL at this learning rate (its scripts: 0.01).
    ``kl_reweighting``: with ``kl_lr > 0``, BLoB's geometric KL weights over each epoch
    (True) instead of uniform ones.
    """

    prior_std: PositiveFloat = 0.2
    eps: PositiveFloat = 0.05
    per_example: bool = True
    kl_lr: NonNegativeFloat = 0.0
    kl_reweighting: bool = True


OPTIONS = BlobOptions


def kl_epoch_weight(step: int, num_data: int, batch_size: int, geometric: bool) -> float:
    """BLoB's KL weight ``pi`` at 0-based trainer step ``step``, over epochs of ``M =
    ceil(num_data / batch_size)`` steps: geometric, ``2^i / (2^(M+1) - 1)`` for step ``i =
    1..M`` of the epoch (summing to ``1 - 1 / (2^(M+1) - 1)``), else ``1 / M``."""
    m = max(1, math.ceil(num_data / batch_size))
    if not geometric:
        return 1.0 / m
    i = step % m + 1
    return 2.0 ** (i - m - 1) / (1.0 - 2.0 ** -(m + 1))  # 2^i / (2^(M+1) - 1) without overflow


class BlobLora(PlainLora):
    stochastic = True

    def __init__(self, backbone, scorer, adapter, options: BlobOptions | None = None) -> None:
        super().__init__(backbone, scorer, adapter, name=NAME)
        opts = options or BlobOptions()
        self.prior_std = opts.prior_std
        self.per_example = opts.per_example
        self.kl_lr = opts.kl_lr
        self.kl_reweighting = opts.kl_reweighting
        self.lora_A_rho = nn.ParameterList(
            nn.Parameter(torch.empty_like(layer.lora_A).uniform_(opts.eps / math.sqrt(2), opts.eps))
            for layer in self.adapters.values()
        )

    def sigmas(self) -> dict[str, torch.Tensor]:
        """Posterior standard deviations ``rho^2`` of A, by module."""
        return {name: rho.square() for name, rho in zip(self.adapters, self.lora_A_rho, strict=True)}

    def kl(self) -> torch.Tensor:
        """``KL(q(A) || p(A))`` summed over modules, in closed form (differentiable)."""
        total = torch.zeros((), device=self.lora_A_rho[0].device)
        for (layer, sigma) in zip(self.adapters.values(), self.sigmas().values(), strict=True):
            var_ratio = (sigma / self.prior_std).square()
            total = total + 0.5 * (
                var_ratio + (layer.lora_A / self.prior_std).square() - 1 - var_ratio.log()
            ).sum()
        return total

    def set_factors(self, factors: dict[str, torch.Tensor] | None) -> None:
        """Per-draw A on every adapter (``None``: the posterior mean)."""
        for name, layer in self.adapters.items():
            layer.gates = None
            layer.sampled_A = None if factors is None else factors[name]

    def _groups(self, batch_size: int, num_draws: int, per_example: bool) -> int:
        return num_draws * batch_size if per_example or self.per_example else num_draws

    def _plate(self, groups: int):
        return pyro.plate("factor_draws", groups, dim=-1)

    def sample_factors(self) -> dict[str, torch.Tensor]:
        """q(A): one ``pyro.sample`` site per module (call inside the draws plate)."""
        return {
            name: pyro.sample(name, dist.Normal(layer.lora_A, sigma).to_event(2))
            for (name, layer), sigma in zip(
                self.adapters.items(), self.sigmas().values(), strict=True
            )
        }

    # --- Pyro program -------------------------------------------------------------------
    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = self._groups(len(index), num_draws, per_example)
        factors = {}
        with self._plate(groups), poutine.scale(scale=1.0 / groups):
            for name, layer in self.adapters.items():
                zero = torch.zeros((), device=layer.lora_A.device)
                prior = dist.Normal(zero, zero + self.prior_std).expand(layer.lora_A.shape)
                factors[name] = pyro.sample(name, prior.to_event(2))
        self.set_factors(factors)
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        self.observe(batch, index, num_data, logits)
        return logits

    def guide(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = self._groups(len(index), num_draws, per_example)
        with self._plate(groups), poutine.scale(scale=1.0 / groups):
            return self.sample_factors()

    def prepare(self, draws: int, sample: bool) -> None:
        if not sample:
            self.set_factors(None)
            return
        with self._plate(draws):
            self.set_factors({k: v.detach() for k, v in self.sample_factors().items()})

    # --- training -----------------------------------------------------------------------
    def training_loss(self, batch, index, num_data, num_draws=1, per_example=False, elbo=None):
        """The negative ELBO; with ``kl_lr > 0`` the NLL alone (the KL is reported and taken
        by :meth:`after_step`)."""
        elbo = elbo or ExactELBO()
        if self.kl_lr > 0:
            elbo = ExactELBO(kl_weight=0.0)
        return elbo.terms(self.model, self.guide, batch, index, num_data, num_draws, per_example)

    def after_step(self, step: int, num_data: int, config) -> None:
        """BLoB's separate SGD step on ``kl_weight * pi * KL`` (nothing when ``kl_lr = 0``)."""
        if self.kl_lr <= 0:
            return
        scale = linear_schedule(config.steps, config.warmup_ratio)(step)
        pi = kl_epoch_weight(step, num_data, config.batch_size, self.kl_reweighting)
        lr = self.kl_lr * scale * pi * config.kl_weight
        if lr == 0:
            return
        params = [layer.lora_A for layer in self.adapters.values()] + list(self.lora_A_rho)
        grads = torch.autograd.grad(self.kl(), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)

    # --- parameters ---------------------------------------------------------------------
    def param_groups(self, lr_factors, lr_gates, weight_decay=0.0):
        groups = super().param_groups(lr_factors, lr_gates, weight_decay)
        groups.append(
            {
                "params": list(self.lora_A_rho),
                "lr": lr_factors,
                "weight_decay": 0.0,
                "name": "variational",
            }
        )
        return groups

    def training_metrics(self) -> dict[str, float]:
        """``sigma_mean`` and ``noise_to_signal`` (mean sigma over the rms of A's means)."""
        with torch.no_grad():
            sigmas = torch.cat([s.flatten() for s in self.sigmas().values()])
            means = torch.cat([layer.lora_A.flatten() for layer in self.adapters.values()])
            rms = float(means.square().mean().sqrt())
        mean = float(sigmas.mean())
        return {"sigma_mean": mean, "noise_to_signal": mean / max(rms, 1e-30)}

    # --- save / load --------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = super().state_tensors()
        state.update(
            {
                f"variational/{name}.lora_A_rho": rho
                for name, rho in zip(self.adapters, self.lora_A_rho, strict=True)
            }
        )
        return state

    def state_extra(self) -> dict:
        return {"sigma": SIGMA_FORM}


def check_saved_format(directory: str | Path) -> None:
    """Refuse a saved BLoB run whose ``sigma`` is not ``rho^2`` (a one-line error)."""
    path = Path(directory) / METHOD_CONFIG
    if not path.is_file():
        return  # load_method names the missing file
    config = json.loads(path.read_text())
    if config.get("method") == NAME and config.get("state", {}).get("sigma") != SIGMA_FORM:
        raise MethodError(
            f"{path} holds a BLoB run saved with sigma = softplus(rho) (option sigma_init); "
            f"this version learns sigma = rho^2 and cannot read it: train the run again"
        )


def build(backbone, scorer, adapter, options: dict) -> BlobLora:
    """Options: see :class:`BlobOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    method = BlobLora(backbone, scorer, adapter, opts)
    method.options = dataclasses.asdict(opts)
    return method


def load(directory: str | Path, backbone, scorer) -> BlobLora:
    check_saved_format(directory)
    return load_method(NAME, build, directory, backbone, scorer)
