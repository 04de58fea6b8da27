"""Training checkpoints that a killed run resumes from, bit for bit.

A checkpoint root (``<run_dir>/checkpoint``) holds one folder per saved step and a ``latest``
file naming the newest complete one::

    checkpoint/latest                   "step-00000040"
    checkpoint/step-00000040/state.safetensors  trainable parameters, optimizer moment
                                        tensors, torch (and CUDA) RNG states
    checkpoint/step-00000040/state.json step, seed, train settings, optimizer param-group
                                        settings, scheduler state, Python/NumPy RNG states,
                                        training history

Only JSON and safetensors are read back: loading a checkpoint never executes stored code.
A step folder is written under a temporary name and renamed into place, then ``latest`` is
replaced atomically and older folders are removed, so a kill at any moment leaves the last
complete checkpoint readable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from itertools import zip_longest
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bslora_pyro.inference.svi import TrainingError
from bslora_pyro.persistence import atomic_write_text

log = logging.getLogger("bslora_pyro")

CHECKPOINT_DIR = "checkpoint"  # inside a run directory
FORMAT = "bslora-checkpoint"
VERSION = 1
LATEST = "latest"
TENSORS = "state.safetensors"
STATE = "state.json"
# settings that must not change across a resume (the data order and schedule depend on them)
RESUME_KEYS = ("steps", "batch_size", "seed", "warmup_ratio", "num_particles", "per_example_masks")


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or does not fit the trainer."""


# ---------------------------------------------------------------------------- RNG


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    version, internal, gauss = random.getstate()
    meta: dict = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        meta["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng/cuda/")),
                       key=lambda k: int(k.rsplit("/", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in meta:
        import numpy as np

        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------------------- state


def _param_names(trainer) -> dict[int, str]:
    method = trainer.method
    if isinstance(method, torch.nn.Module):
        return {id(p): name for name, p in method.named_parameters()}
    return {}


def _training_buffers(trainer) -> dict[str, torch.Tensor]:
    """Buffers the method changes while it trains (``training_buffers()``; none by default)."""
    buffers = getattr(trainer.method, "training_buffers", None)
    return buffers() if buffers is not None else {}


def checkpoint_state(trainer) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainer's full training state as (safetensors tensors, JSON-able dict)."""
    names = _param_names(trainer)
    tensors: dict[str, torch.Tensor] = {}
    params_meta = []
    for g, group in enumerate(trainer.optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            tensors[f"param/{g}/{i}"] = p.detach()
            params_meta.append({"key": f"param/{g}/{i}", "name": names.get(id(p), ""),
                                "shape": list(p.shape)})
    optim = trainer.optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, state in optim["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors.update({f"buffer/{k}": v.detach() for k, v in _training_buffers(trainer).items()})
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": trainer.step,
        "seed": trainer.config.seed,
        "train": trainer.config.to_dict(),
        "params": params_meta,
        "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars,
                      "state_ids": [int(k) for k in optim["state"]]},
        "scheduler": trainer.scheduler.state_dict(),
        "rng": rng_meta,
        "history": trainer.history,
    }
    return tensors, meta


def _check_finite(trainer) -> None:
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            if not torch.isfinite(p.detach()).all():
                raise TrainingError(
                    f"parameters are not finite after step {trainer.step}; the last good "
                    "checkpoint is kept"
                )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(trainer, root: str | Path) -> Path:
    """Write the trainer's state to ``root/step-XXXXXXXX`` atomically and point ``latest``
    at it; older step folders are removed. Refuses to save non-finite parameters."""
    _check_finite(trainer)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tensors, meta = checkpoint_state(trainer)
    name = f"step-{trainer.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / TENSORS), metadata={"format": FORMAT})
        (tmp / STATE).write_text(json.dumps(meta))
        for child in (tmp / TENSORS, tmp / STATE):
            with child.open("rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is a normal folder
        final = root / name
        if final.exists():  # the same step saved again (e.g. right after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / LATEST, name + "\n")
    for old in root.iterdir():
        if old.is_dir() and old.name != name and old.name.startswith(("step-", ".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None when there is none)."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        raise CheckpointError(f"{pointer} names {folder.name}, which is incomplete or missing")
    return folder


def _read(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        meta = json.loads((directory / STATE).read_text())
        tensors = load_file(str(directory / TENSORS))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {directory}: {error}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{directory} is not a bslora checkpoint (version {VERSION})")
    return tensors, meta


def _check_fits(trainer, meta: dict, tensors: dict, directory: Path) -> None:
    saved = meta["train"]
    current = trainer.config.to_dict()
    for key in RESUME_KEYS:
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"{directory} was written with train.{key}={saved.get(key)!r}, this run has "
                f"{current.get(key)!r}; resume with the original settings"
            )
    names = _param_names(trainer)
    expected = [
        (f"param/{g}/{i}", names.get(id(p), ""), list(p.shape))
        for g, group in enumerate(trainer.optimizer.param_groups)
        for i, p in enumerate(group["params"])
    ]
    found = [(m["key"], m["name"], m["shape"]) for m in meta["params"]]
    if expected != found:
        diff = next((e, f) for e, f in zip_longest(expected, found) if e != f)
        raise CheckpointError(
            f"{directory} does not fit this model: expected {diff[0]}, found {diff[1]}"
        )
    missing = [key for key, _, _ in expected if key not in tensors]
    missing += [f"buffer/{k}" for k in _training_buffers(trainer) if f"buffer/{k}" not in tensors]
    if missing:
        raise CheckpointError(f"{directory} lacks tensor {missing[0]}")


def restore_checkpoint(trainer, directory: str | Path) -> int:
    """Load a checkpoint (a step folder, or a root whose ``latest`` is followed) into
    ``trainer``: parameters, optimizer, scheduler, RNG states, step and history.
    Returns the restored step."""
    directory = Path(directory)
    if (directory / LATEST).is_file():
        directory = latest_checkpoint(directory)
    if not (directory / STATE).is_file():
        raise CheckpointError(f"no checkpoint at {directory} ({STATE} is missing)")
    tensors, meta = _read(directory)
    _check_fits(trainer, meta, tensors, directory)
    with torch.no_grad():
        for g, group in enumerate(trainer.optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                p.copy_(tensors[f"param/{g}/{i}"])
        for name, buffer in _training_buffers(trainer).items():
            buffer.copy_(tensors[f"buffer/{name}"])
    optim = meta["optimizer"]
    state: dict[int, dict] = {}
    for pid in optim["state_ids"]:
        entry = dict(optim["scalars"].get(str(pid), {}))
        prefix = f"optim/{pid}/"
        entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[pid] = entry
    groups = []
    for group in optim["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(tensors, meta["rng"])
    trainer.step = int(meta["step"])
    trainer.history = list(meta["history"])
    return trainer.step


class Checkpointer:
    """``on_step`` callback: save every ``every`` steps and at the last step (0 disables);
    only where ``enabled`` (the main process)."""

    def __init__(self, root: str | Path, every: int, enabled: bool = True) -> None:
        self.root = Path(root)
        self.every = every
        self.enabled = enabled and every > 0

    def __call__(self, trainer, record: dict) -> None:
        step = trainer.step
        if self.enabled and (step % self.every == 0 or step == trainer.config.steps):
            save_checkpoint(trainer, self.root)

    def describe(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        try:
            folder = latest_checkpoint(self.root)
        except CheckpointError:
            folder = None
        if folder is None:
            return "no checkpoint was written"
        return f"last good checkpoint: {folder} (resume with --resume)"


def resume(trainer, root: str | Path) -> int:
    """Restore the latest checkpoint under ``root``; start from step 0 when there is none."""
    folder = latest_checkpoint(root)
    if folder is None:
        log.warning("--resume: no checkpoint in %s; starting from step 0", root)
        return 0
    step = restore_checkpoint(trainer, folder)
    log.warning("resumed from %s (step %d of %d)", folder, step, trainer.config.steps)
    return step
