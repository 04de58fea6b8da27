"""MC dropout: LoRA dropout on the adapter input, kept on at test time.

Training is plain LoRA with dropout (``num_draws`` dropout draws per step when asked).
Prediction replicates the batch draw-major and runs one batched forward: every row gets
its own dropout mask, so ``predict_logits`` returns M different draws ``[M, B, C]``. The
deterministic prediction turns dropout off (the usual inverted-dropout mean network).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bslora_pyro.methods import MethodError
from bslora_pyro.methods.mle import PlainLora, load_method, take_options

NAME = "mc_dropout"


class MCDropoutLora(PlainLora):
    stochastic = True

    def prepare(self, draws: int, sample: bool) -> None:
        super().prepare(draws, sample)
        for layer in self.adapters.values():
            layer.lora_dropout.train(sample)


def build(backbone, scorer, adapter, options: dict) -> MCDropoutLora:
    """Options: ``dropout`` (default 0.1, or the adapter's dropout when that is set)."""
    options = take_options(NAME, options, {"dropout": adapter.dropout or 0.1})
    rate = float(options["dropout"])
    if not 0.0 < rate < 1.0:
        raise MethodError(f"mc_dropout.dropout must be in (0, 1), got {rate}")
    method = MCDropoutLora(backbone, scorer, dataclasses.replace(adapter, dropout=rate), name=NAME)
    method.options = {"dropout": rate}
    return method


def load(directory: str | Path, backbone, scorer) -> MCDropoutLora:
    return load_method(NAME, build, directory, backbone, scorer)
