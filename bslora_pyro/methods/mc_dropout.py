"""MC dropout: LoRA dropout on the adapter input, kept on at test time.

Training is plain LoRA with dropout (``num_draws`` dropout draws per step when asked).
Prediction replicates the batch draw-major and runs one batched forward: every row gets
its own dropout mask, so ``predict_logits`` returns M different draws ``[M, B, C]``. The
deterministic prediction turns dropout off (the usual inverted-dropout mean network).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import OpenUnitFloat

NAME = "mc_dropout"


@dataclass
class MCDropoutOptions(MethodOptions):
    """``dropout`` in (0, 1) (default, or ``None``: the adapter's dropout when set, else
    0.1)."""

    dropout: OpenUnitFloat | None = None

    def check(self, adapter: AdapterConfig | None) -> None:
        if self.dropout is None and adapter is not None:
            self.dropout = float(adapter.dropout or 0.1)  # adapter.dropout is in [0, 1)


OPTIONS = MCDropoutOptions


class MCDropoutLora(PlainLora):
    stochastic = True

    def prepare(self, draws: int, sample: bool) -> None:
        super().prepare(draws, sample)
        for layer in self.adapters.values():
            layer.lora_dropout.train(sample)


def build(backbone, scorer, adapter, options: dict) -> MCDropoutLora:
    """Options: see :class:`MCDropoutOptions`."""
    rate = take_options(NAME, options, OPTIONS, adapter).dropout
    method = MCDropoutLora(backbone, scorer, dataclasses.replace(adapter, dropout=rate), name=NAME)
    method.options = {"dropout": rate}
    return method


def load(directory: str | Path, backbone, scorer) -> MCDropoutLora:
    return load_method(NAME, build, directory, backbone, scorer)
