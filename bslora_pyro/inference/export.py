"""Save and load a fitted posterior; export a pruned deterministic PEFT adapter.

Posterior format (a folder): ``posterior.safetensors`` with the LoRA factors, task-head
weights and variational parameters, and ``posterior.json`` with everything needed to
rebuild the model on the same backbone. Files are written to a temporary name and renamed,
so an interrupted save never leaves a half-written posterior.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

POSTERIOR_WEIGHTS = "posterior.safetensors"
POSTERIOR_CONFIG = "posterior.json"
FORMAT = "bslora-posterior"


def _umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it, then putting it back
    os.umask(umask)
    return umask


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file the permissions a plain write would (``mkstemp``
    makes it owner-only) and rename it over ``path`` atomically."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    _publish(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    """``safetensors`` save through a temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(contiguous, tmp, metadata=metadata)
    _publish(tmp, path)


def posterior_state(method) -> dict[str, torch.Tensor]:
    state = {f"factors/{k}": v for k, v in method.factor_parameters().items()}
    state.update({f"variational/{k}": v for k, v in method.gate_parameters().items()})
    return state


def save_posterior(method, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the posterior of a :class:`BayesianLora` (factors + q parameters) to a folder.

    ``extra`` is stored in the JSON (backbone id, scoring mode, ...) for the CLI.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": 1,
        "adapter": method.adapter_config.to_dict(),
        "prior": {"name": method.prior.name, "hyperparameters": method.prior.hyperparameters()},
        "guide": {"name": method.gate_guide.name, **method.gate_guide.options()},
        "modules": {name: layer.r for name, layer in method.adapters.items()},
        "factor_prior_std": getattr(method, "factor_prior_std", None),
        **(extra or {}),
    }
    atomic_save_tensors(posterior_state(method), directory / POSTERIOR_WEIGHTS)
    atomic_write_text(directory / POSTERIOR_CONFIG, json.dumps(config, indent=2))
    return directory


def read_posterior_config(directory: str | Path) -> dict:
    path = Path(directory) / POSTERIOR_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no posterior at {directory}: {POSTERIOR_CONFIG} is missing")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bslora posterior (format={config.get('format')!r})")
    return config


def load_posterior(directory: str | Path, backbone, scorer, cls=None):
    """Rebuild a :class:`BayesianLora` (or the subclass ``cls``) on ``backbone`` and load
    the saved posterior."""
    from bslora_pyro.adapter import AdapterConfig
    from bslora_pyro.bayesian_lora import BayesianLora

    config = read_posterior_config(directory)
    method = (cls or BayesianLora)(
        backbone,
        scorer,
        AdapterConfig(**config["adapter"]),
        prior=config["prior"]["name"],
        prior_kwargs=config["prior"]["hyperparameters"],
        guide=dict(config["guide"]),  # without "name" (version 1 files): mean-field
        factor_prior_std=config.get("factor_prior_std"),
    )
    load_posterior_state(method, Path(directory) / POSTERIOR_WEIGHTS)
    return method


def copy_tensors(
    current: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], source: str = "saved tensors"
) -> None:
    """Copy ``saved`` into ``current`` in place; keys and shapes must match exactly."""
    missing, unexpected = current.keys() - saved.keys(), saved.keys() - current.keys()
    if missing or unexpected:
        raise ValueError(
            f"{source} do not fit this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    with torch.no_grad():
        for key, tensor in current.items():
            if tensor.shape != saved[key].shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(saved[key].shape)}, "
                    f"expected {tuple(tensor.shape)}"
                )
            tensor.copy_(saved[key])


def load_posterior_state(method, path: Path) -> None:
    """Copy a saved posterior into ``method``; every key must match exactly."""
    copy_tensors(posterior_state(method), load_file(str(path)), f"tensors in {path}")


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
