"""A correlated guide: an autoregressive Bernoulli over each module's r gates.

q(z) = prod_j Bernoulli(z_j | sigmoid(phi_j + sum_{k<j} W_jk z_k)) with W strictly lower
triangular, started at W = 0 and phi = logit(prior), i.e. at the prior. Ranks can then
substitute for each other (keep rank 3 only when rank 1 is off). The KL to a factorised
Bernoulli prior is exact, by enumerating the 2^r gate configurations (r <= 16).
"""

from __future__ import annotations

import torch
from torch import nn

from bslora_pyro.models.gates import AutoregressiveGate
from bslora_pyro.models.guides.base import LogitGateGuide, param_key


class AutoregressiveGuide(LogitGateGuide):
    name = "autoregressive"

    def __init__(self, prior, **options) -> None:
        super().__init__(prior, **options)
        self.gate_weights = nn.ParameterDict({
            param_key(m): nn.Parameter(torch.zeros(r, r)) for m, r in self.module_ranks.items()
        })

    def gate_distribution(self, module, features=None, hard=False) -> AutoregressiveGate:
        return AutoregressiveGate(self.temperature, self.logits_of(module),
                                  self.gate_weights[param_key(module)], hard=hard)
