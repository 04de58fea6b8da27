"""Plain LoRA trained by maximum likelihood (MLE); with weight decay it is the MAP baseline.

Implemented as the gated model with every gate fixed at 1 and no latent variables, so it
shares layers, scoring and the training loop with the Bayesian method.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bslora_pyro.adapter import inject_gated_lora
from bslora_pyro.adapter.inject import trainable_head_parameters
from bslora_pyro.inference.elbo import ExactELBO

NAME = "mle"


class PlainLora(nn.Module):
    """LoRA point estimate: the Pyro model has only the observed answers."""

    name = "mle"

    def __init__(self, backbone: nn.Module, scorer, adapter) -> None:
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer
        self.adapter_config = adapter
        self.adapters = inject_gated_lora(backbone, adapter)

    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        for layer in self.adapters.values():
            layer.gates = None
        logits = self.scorer.logits(self.backbone, batch, 1)
        with pyro.plate("draws", 1, dim=-2), pyro.plate("data", num_data, subsample=index):
            pyro.sample("answer", dist.Categorical(logits=logits), obs=batch.labels)
        return logits

    def guide(self, *args, **kwargs) -> None:
        return None

    def training_loss(self, batch, index, num_data, num_draws=1, per_example=False, elbo=None):
        return (elbo or ExactELBO())(self.model, self.guide, batch, index, num_data)

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        named = {
            f"{name}.{leaf}": getattr(layer, leaf)
            for name, layer in self.adapters.items()
            for leaf in ("lora_A", "lora_B")
        }
        named.update(trainable_head_parameters(self.backbone, self.adapter_config))
        return named

    def param_groups(self, lr_factors, lr_gates, weight_decay=0.0):
        return [
            {
                "params": list(self.factor_parameters().values()),
                "lr": lr_factors,
                "weight_decay": weight_decay,
                "name": "factors",
            }
        ]

    def training_metrics(self) -> dict[str, float]:
        return {}

    def set_progress(self, fraction: float) -> None:
        return None

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        for layer in self.adapters.values():
            layer.gates = None
        return self.scorer.logits(self.backbone, batch, 1)


def build(backbone, scorer, adapter, options: dict) -> PlainLora:
    return PlainLora(backbone, scorer, adapter)
