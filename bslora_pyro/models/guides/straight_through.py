"""Straight-through hard gates: exact 0/1 gates in the forward pass during training (as at
prediction), gradients through the binary Concrete relaxation."""

from __future__ import annotations

from bslora_pyro.models.guides.mean_field import MeanFieldGuide


class StraightThroughGuide(MeanFieldGuide):
    name = "straight_through"

    def __init__(self, prior, **options) -> None:
        options.pop("straight_through", None)
        super().__init__(prior, straight_through=True, **options)

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "straight_through"}
