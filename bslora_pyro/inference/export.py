"""Export a fitted posterior as a pruned deterministic PEFT LoRA adapter.

The posterior's own format (save, load) lives in :mod:`bslora_pyro.persistence`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from bslora_pyro.persistence import atomic_save_tensors, atomic_write_text


def pruned_factors(method, threshold: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module, the (A, B) of the deterministic adapter kept after pruning.

    Ranks with q(z_j = 1) < ``threshold`` are removed; each kept rank's B column is scaled
    by its inclusion probability and by alpha / r, so the export computes the posterior-mean
    gated update ``(alpha/r) B diag(q * 1[q >= t]) A`` exactly, with scale 1 in PEFT.
    Modules with no rank left are omitted.
    """
    out = {}
    probs = method.inclusion_probs()
    for name, layer in method.adapters.items():
        q = probs[name]
        keep = q >= threshold
        if keep.any():
            a = layer.lora_A.detach()[keep]
            b = layer.lora_B.detach()[:, keep] * (q[keep] * layer.scaling)
            out[name] = (a, b)
    return out


def export_peft_adapter(
    method,
    directory: str | Path,
    threshold: float = 0.5,
    base_model_name_or_path: str | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> dict[str, int]:
    """Write a standard PEFT LoRA adapter (``PeftModel.from_pretrained`` loads it).

    Per-module ranks go to ``rank_pattern`` and ``alpha_pattern`` (alpha = rank, scale 1;
    the factors carry the scale). Task heads are saved as ``modules_to_save``. Returns the
    kept rank of each exported module.
    """
    from peft import LoraConfig

    factors = pruned_factors(method, threshold)
    if not factors:
        raise ValueError(f"no rank has q(z=1) >= {threshold}; lower the export threshold")
    ranks = {name: a.shape[0] for name, (a, _) in factors.items()}
    top = max(ranks.values())
    heads = list(method.adapter_config.trainable_modules)
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=list(factors),
        rank_pattern={re.escape(n): k for n, k in ranks.items()},
        alpha_pattern={re.escape(n): k for n, k in ranks.items()},
        lora_dropout=0.0,
        bias="none",
        modules_to_save=heads or None,
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
    )
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    for name, p in method.factor_parameters().items():
        if ".lora_" not in name:
            module, _, leaf = name.rpartition(".")
            tensors[f"base_model.model.{module}.{leaf}"] = p.detach()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(tensors, directory / "adapter_model.safetensors", {"format": "pt"})
    atomic_write_text(
        directory / "adapter_config.json", json.dumps(config.to_dict(), indent=2, default=list)
    )
    return ranks
