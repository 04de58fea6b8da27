"""The default guide: independent relaxed-Bernoulli (binary Concrete) gates.

q(z_j) = Bernoulli(sigmoid(phi_j)), one logit per rank and module, relaxed at temperature
tau for reparametrised gradients; exact 0/1 gates at prediction. ``straight_through=True``
uses hard gates in the forward pass with relaxed gradients.
"""

from __future__ import annotations

from bslora_pyro.models.gates import ConcreteGate
from bslora_pyro.models.guides.base import LogitGateGuide


class MeanFieldGuide(LogitGateGuide):
    name = "mean_field"

    def __init__(self, prior, straight_through: bool = False, **options) -> None:
        super().__init__(prior, **options)
        self.straight_through = bool(straight_through)

    def gate_distribution(self, module, features=None, hard=False) -> ConcreteGate:
        return ConcreteGate(self.temperature, self.logits_of(module), self.straight_through,
                            hard=hard)

    def options(self) -> dict:
        return {**super().options(), "straight_through": self.straight_through}
