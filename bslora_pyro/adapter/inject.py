"""Put gated LoRA layers into a frozen Hugging Face model."""

from __future__ import annotations

import re

from torch import nn

from bslora_pyro.adapter.config import AdapterConfig, AdapterConfigError
from bslora_pyro.adapter.gated_lora import GatedLoraLinear

_ADAPTABLE = ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")  # + bitsandbytes bases


def block_index(module_path: str) -> int | None:
    """The transformer block a module belongs to: the first integer in its path."""
    for part in module_path.split("."):
        if part.isdigit():
            return int(part)
    return None


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks, from the config or from the module paths."""
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    indices = [block_index(name) for name, _ in model.named_modules()]
    return max((i for i in indices if i is not None), default=-1) + 1


def resolve_layers(layers: list[int] | str | None, total: int) -> set[int] | None:
    """Turn ``[-4, -3]``, ``"-4:"`` or ``"0:2"`` into a set of block indices."""
    if layers is None:
        return None
    if isinstance(layers, str):
        match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", layers)
        if not match:
            raise AdapterConfigError(f"adapter.layers: cannot read {layers!r}; use e.g. '-4:'")
        start = int(match[1]) if match[1] else None
        stop = int(match[2]) if match[2] else None
        chosen = set(range(total)[slice(start, stop)])
    else:
        chosen = set()
        for index in layers:
            if not -total <= index < total:
                raise AdapterConfigError(
                    f"adapter.layers: index {index} is out of range for {total} blocks"
                )
            chosen.add(index % total)
    if not chosen:
        raise AdapterConfigError(f"adapter.layers={layers!r} selects no block of {total}")
    return chosen


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name.rsplit(".", 1)[-1] in targets


def find_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Paths of the modules the config selects, in model order."""
    blocks = resolve_layers(config.layers, num_blocks(model))
    found = []
    for name, module in model.named_modules():
        if not name or not _matches(name, config.target_modules):
            continue
        index = block_index(name)
        if blocks is not None and index is not None and index not in blocks:
            continue
        if type(module).__name__ not in _ADAPTABLE:
            raise AdapterConfigError(
                f"adapter.target_modules matched {name!r}, a {type(module).__name__}; "
                "only Linear and Conv1D layers can be adapted"
            )
        found.append(name)
    if not found:
        leaves = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in _ADAPTABLE}
        )
        raise AdapterConfigError(
            f"adapter.target_modules={config.target_modules!r} (layers={config.layers!r}) "
            f"matches no module; linear layers in this model: {', '.join(leaves)}"
        )
    return found


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def inject_gated_lora(model: nn.Module, config: AdapterConfig) -> dict[str, GatedLoraLinear]:
    """Freeze ``model``, wrap every targeted layer in :class:`GatedLoraLinear`.

    Returns the adapters by module path (the names used for the Pyro gate sites).
    Modules named in ``config.trainable_modules`` stay trainable (task heads).
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters: dict[str, GatedLoraLinear] = {}
    for name in find_targets(model, config):
        layer = GatedLoraLinear(model.get_submodule(name), config.r, config.alpha, config.dropout)
        _set_submodule(model, name, layer)
        adapters[name] = layer
    for head in config.trainable_modules:
        matched = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == head]
        if not matched:
            raise AdapterConfigError(f"adapter.trainable_modules: no module named {head!r}")
        for module in matched:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
    return adapters


def trainable_head_parameters(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Parameter]:
    """The task-head parameters selected by ``config.trainable_modules``, by full name."""
    heads = set(config.trainable_modules)
    return {
        name: p
        for name, p in model.named_parameters()
        if any(part in heads for part in name.split(".")[:-1]) and ".lora_" not in name
    }


def adapter_parameters(
    adapters: dict[str, GatedLoraLinear], model: nn.Module, config: AdapterConfig
) -> dict[str, nn.Parameter]:
    """The point-estimate parameters of an adapted model: every adapter's ``lora_A`` and
    ``lora_B`` and the task heads, by full name."""
    named = {
        f"{name}.{leaf}": getattr(layer, leaf)
        for name, layer in adapters.items()
        for leaf in ("lora_A", "lora_B")
    }
    named.update(trainable_head_parameters(model, config))
    return named
