"""An input-amortized guide: q(z | x), gate logits per example from a small network.

The network reads a pooled hidden state of the batch's questions (from the frozen prefix,
see ``ChoiceScorer.question_features``): ``logits = phi + W2 tanh(W1 h)``, with ``W2 = 0``
at the start so that q(z | x) is the prior for every x. The gates are local latents: one
draw per example and draw inside the data plate, their KL counted per example and scaled
to the dataset. Prediction averages over draws of q(z | x) for each question.
``inclusion_probs()`` without features reports q at the mean training feature.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from bslora_pyro.models.base import PriorConfigError
from bslora_pyro.models.gates import ConcreteGate
from bslora_pyro.models.guides.base import LogitGateGuide
from bslora_pyro.typed import PositiveInt, Range


class AmortizedGuide(LogitGateGuide):
    name = "amortized"
    local = True

    def __init__(self, prior, hidden: PositiveInt = 64,
                 momentum: Annotated[float, Range(gt=0, le=1)] = 0.01, **options) -> None:
        super().__init__(prior, **options)
        if self.feature_size is None:
            raise PriorConfigError("the amortized guide needs the backbone's feature size")
        self.hidden = hidden
        self.momentum = float(momentum)
        total = sum(self.module_ranks.values())
        self.encoder = nn.Sequential(nn.LayerNorm(self.feature_size),
                                     nn.Linear(self.feature_size, hidden), nn.Tanh())
        self.readout = nn.Linear(hidden, total, bias=False)
        nn.init.zeros_(self.readout.weight)
        self.register_buffer("feature_mean", torch.zeros(self.feature_size))
        self._shift_now: torch.Tensor | None = None

    def _offsets(self, module: str) -> slice:
        start = 0
        for name, r in self.module_ranks.items():
            if name == module:
                return slice(start, start + r)
            start += r
        raise KeyError(module)

    def _shift(self, features: torch.Tensor | None) -> torch.Tensor:
        """Input-dependent logit offsets ``[B, total]`` (``[total]`` at the mean feature)."""
        if features is None:
            features = self.feature_mean
        elif self.training:
            with torch.no_grad():
                self.feature_mean.lerp_(features.detach().float().mean(0), self.momentum)
        return self.readout(self.encoder(features.float()))

    def _distribution(self, module: str, shift: torch.Tensor, hard: bool) -> ConcreteGate:
        logits = self.logits_of(module) + shift[..., self._offsets(module)]
        return ConcreteGate(self.temperature, logits, hard=hard)

    def gate_distribution(self, module, features=None, hard=False) -> ConcreteGate:
        shift = self._shift_now if self._shift_now is not None else self._shift(features)
        return self._distribution(module, shift, hard)

    def forward(self, gate_plate, features=None, hard=False, temperature=None):
        self._shift_now = self._shift(features)  # one network pass shared by every module
        try:
            return super().forward(gate_plate, features, hard, temperature)
        finally:
            self._shift_now = None

    def inclusion_probs(self, features=None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            shift = self._shift(features)
            return {m: self._distribution(m, shift, False).inclusion_probs()
                    for m in self.module_ranks}

    def options(self) -> dict:
        return {**super().options(), "hidden": self.hidden, "momentum": self.momentum}
