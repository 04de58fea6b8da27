"""Files on disk, in one place: atomic writes, tensor copies, and the posterior format.

Every file is written to a temporary name in its folder and renamed over the target, so an
interrupted save never leaves a half-written file. Posterior format (a folder):
``posterior.safetensors`` with the LoRA factors, task-head weights and variational
parameters, and ``posterior.json`` with everything needed to rebuild the model on the same
backbone (:func:`bslora_pyro.bayesian_lora.load_posterior` rebuilds it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

POSTERIOR_WEIGHTS = "posterior.safetensors"
POSTERIOR_CONFIG = "posterior.json"
FORMAT = "bslora-posterior"


# --------------------------------------------------------------------------- atomic writes


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


# --------------------------------------------------------------------------- tensor copies


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


# --------------------------------------------------------------------------- posterior


def posterior_state(method) -> dict[str, torch.Tensor]:
    """The tensors of a posterior (live references): factors, variational parameters and
    the guide's buffers (statistics it keeps while training, e.g. the amortized guide's
    mean feature)."""
    state = {f"factors/{k}": v for k, v in method.factor_parameters().items()}
    state.update({f"variational/{k}": v for k, v in method.gate_parameters().items()})
    state.update({f"buffers/{k}": v for k, v in method.gate_guide.named_buffers()})
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
    """The JSON half of a saved posterior; errors for a missing or foreign folder."""
    path = Path(directory) / POSTERIOR_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no posterior at {directory}: {POSTERIOR_CONFIG} is missing")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bslora posterior (format={config.get('format')!r})")
    return config


def load_posterior_state(method, path: Path) -> None:
    """Copy a saved posterior into ``method``; every key must match exactly (a file saved
    before guide buffers were kept, with no ``buffers/`` key at all, loads its parameters
    and keeps the guide's fresh buffers)."""
    saved = load_file(str(path))
    current = posterior_state(method)
    if not any(key.startswith("buffers/") for key in saved):
        current = {k: v for k, v in current.items() if not k.startswith("buffers/")}
    copy_tensors(current, saved, f"tensors in {path}")
