"""4-bit / 8-bit quantized backbones through bitsandbytes (``model.quantization``).

The frozen base is quantized (NF4 with double quantization, or LLM.int8); the LoRA factors,
gates and task heads stay in float32, so a 7-8B model trains on one GPU. bitsandbytes
kernels need CUDA: on other devices loading stops with a one-line error.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

MODES = ("4bit", "8bit")


class QuantizationError(ValueError):
    """A quantized base that cannot be loaded here."""


def check_mode(mode: str | None) -> str | None:
    if mode is not None and mode not in MODES:
        raise QuantizationError(f"model.quantization must be null, 4bit or 8bit, got {mode!r}")
    return mode


def bnb_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The ``transformers.BitsAndBytesConfig`` of ``mode``."""
    from transformers import BitsAndBytesConfig

    check_mode(mode)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def quantization_kwargs(
    mode: str | None, compute_dtype: torch.dtype, device: Any = None
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``mode`` ({} when None).

    The whole model goes to one CUDA device (``device``, else the current one); raises
    :class:`QuantizationError` without CUDA or without the bitsandbytes package.
    """
    if check_mode(mode) is None:
        return {}
    target = torch.device(device) if device is not None else None
    if not torch.cuda.is_available() or (target is not None and target.type != "cuda"):
        where = "no CUDA device is available" if not torch.cuda.is_available() else (
            f"model.device is {target}")
        raise QuantizationError(
            f"model.quantization={mode} needs a CUDA GPU and the bitsandbytes package, but "
            f"{where}; set model.quantization: null to load the base unquantized"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(
            f"model.quantization={mode} needs the bitsandbytes package: pip install bitsandbytes"
        )
    index = target.index if target is not None and target.index is not None else None
    if index is None:
        index = torch.cuda.current_device()
    return {"quantization_config": bnb_config(mode, compute_dtype), "device_map": {"": index}}
