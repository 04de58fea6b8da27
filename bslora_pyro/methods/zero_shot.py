"""The pretrained model as it is: no adapter, no training (the reference point)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bslora_pyro.methods.base import Method, MethodOptions, take_options

NAME = "zero_shot"


@dataclass
class ZeroShotOptions(MethodOptions):
    """Zero-shot takes no options."""


OPTIONS = ZeroShotOptions


class ZeroShot(nn.Module, Method):
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
    take_options(NAME, options, OPTIONS, adapter)
    return ZeroShot(backbone, scorer)


def load(directory: str | Path, backbone, scorer) -> ZeroShot:
    """Nothing was trained or saved: the backbone as it is."""
    return ZeroShot(backbone, scorer)
