"""Gated LoRA layers and their injection into Hugging Face models."""

from bslora_pyro.adapter.config import AdapterConfig, AdapterConfigError
from bslora_pyro.adapter.gated_lora import GatedLoraLinear, GateShapeError
from bslora_pyro.adapter.inject import find_targets, inject_gated_lora

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "GateShapeError",
    "GatedLoraLinear",
    "find_targets",
    "inject_gated_lora",
]
