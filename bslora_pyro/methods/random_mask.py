"""Random rank masking (the paper's ablation): K of r ranks switched off at random.

Every forward draws, per adapted module and per draw, a gate vector with exactly K zeros
at uniformly random ranks (``gates`` of shape ``[G, r]``, as the Bayesian method uses).
Training draws fresh masks each step; prediction averages M random masks. The
deterministic prediction uses the mean gate ``(r - K) / r`` on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import NonNegativeInt

NAME = "random_mask"


@dataclass
class RandomMaskOptions(MethodOptions):
    """``num_masked`` K, 0 <= K < r (default, or ``None``: r // 2)."""

    num_masked: NonNegativeInt | None = None

    def check(self, adapter: AdapterConfig | None) -> None:
        if adapter is None:
            return
        if self.num_masked is None:
            self.num_masked = adapter.r // 2
        if not 0 <= self.num_masked < adapter.r:
            raise MethodError(f"method {NAME!r}: method_options.num_masked must be an integer "
                              f"in [0, {adapter.r}) (adapter.r), got {self.num_masked!r}")


OPTIONS = RandomMaskOptions


def random_masks(groups: int, r: int, masked: int, device=None) -> torch.Tensor:
    """``[groups, r]`` gates in {0, 1} with exactly ``masked`` zeros per row."""
    order = torch.rand(groups, r, device=device).argsort(dim=-1)
    gates = torch.ones(groups, r, device=device)
    return gates.scatter(-1, order[:, :masked], 0.0)


class RandomMaskLora(PlainLora):
    stochastic = True

    def __init__(self, *args, num_masked: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_masked = num_masked

    def prepare(self, draws: int, sample: bool) -> None:
        super().prepare(draws, sample)
        for layer in self.adapters.values():
            device = layer.lora_A.device
            if sample:
                layer.gates = random_masks(draws, layer.r, self.num_masked, device)
            else:
                layer.gates = torch.full((layer.r,), 1 - self.num_masked / layer.r, device=device)

    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = num_draws * len(index) if per_example else num_draws
        self.prepare(groups, sample=True)
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        self.observe(batch, index, num_data, logits)
        return logits


def build(backbone, scorer, adapter, options: dict) -> RandomMaskLora:
    """Options: see :class:`RandomMaskOptions`."""
    masked = take_options(NAME, options, OPTIONS, adapter).num_masked
    method = RandomMaskLora(backbone, scorer, adapter, name=NAME, num_masked=masked)
    method.options = {"num_masked": masked}
    return method


def load(directory: str | Path, backbone, scorer) -> RandomMaskLora:
    return load_method(NAME, build, directory, backbone, scorer)
