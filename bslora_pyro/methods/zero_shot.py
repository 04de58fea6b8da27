"""The pretrained model as it is: no adapter, no training (the reference point)."""

from __future__ import annotations

import torch
from torch import nn

NAME = "zero_shot"


class ZeroShot(nn.Module):
    name = "zero_shot"
    trainable = False

    def __init__(self, backbone: nn.Module, scorer) -> None:
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer
        self.adapters: dict = {}

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        return self.scorer.logits(self.backbone, batch, 1)


def build(backbone, scorer, adapter, options: dict) -> ZeroShot:
    return ZeroShot(backbone, scorer)
