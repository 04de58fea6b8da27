"""The cross-step cache of block-``k`` hidden states, and the prefix forward through it."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from bslora_pyro.scoring.prefix.frozen import FrozenPrefix
from bslora_pyro.scoring.prefix.packing import PackedRows
from bslora_pyro.scoring.prefix.rows import Rows

logger = logging.getLogger(__name__)


class PrefixCache:
    """Block-``k`` hidden states of real tokens by row key, within ``budget_mb``.

    Entries are stored on ``device`` (CPU RAM by default) together with the row's signature
    (:meth:`Rows.signatures`) and served only when the signature matches. When the next entry
    would exceed the budget caching stops (logged once) and later misses are computed.
    """

    def __init__(self, budget_mb: float, device: torch.device | str = "cpu") -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self.device = torch.device(device)
        self.entries: dict[Hashable, tuple[Tensor, Tensor]] = {}
        self.nbytes = 0
        self.full = False
        self._estimated = False

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
        self.full = False

    def get(self, key: Hashable, signature: Tensor) -> Tensor | None:
        entry = self.entries.get(key)
        if entry is None or not torch.equal(entry[0], signature):
            return None
        return entry[1]

    def put(self, key: Hashable, signature: Tensor, hidden: Tensor) -> bool:
        """Store ``hidden`` ``[n, H]``; False (and no copy) when over budget."""
        self._log_estimate(hidden)
        old = self.entries.pop(key, None)
        if old is not None:
            self.nbytes -= _nbytes(old[1])
        size = _nbytes(hidden)
        if self.full or self.nbytes + size > self.budget_bytes:
            if not self.full:
                logger.warning(
                    "prefix cache full at %d rows (%.1f MB of %.1f MB): computing the rest",
                    len(self.entries),
                    self.nbytes / 2**20,
                    self.budget_bytes / 2**20,
                )
            self.full = True
            return False
        self.entries[key] = (signature, hidden.detach().to(self.device, copy=True))
        self.nbytes += size
        return True

    def _log_estimate(self, hidden: Tensor) -> None:
        if self._estimated:
            return
        self._estimated = True
        per_token = hidden.shape[-1] * hidden.element_size()
        logger.info(
            "prefix cache: %d bytes per token (hidden %d, %s); budget %.0f MB holds ~%d tokens",
            per_token,
            hidden.shape[-1],
            hidden.dtype,
            self.budget_bytes / 2**20,
            self.budget_bytes // max(1, per_token),
        )


def prefix_fingerprint(prefix: FrozenPrefix) -> tuple:
    """Identifies the frozen weights below ``prefix.start`` cheaply (class, source, and a
    strided sample of every parameter): fresh loads of the same checkpoint share it, and
    so their cached states; other or edited weights (merged adapters) change it. Edits
    that touch none of the sampled entries go unseen: clear the cache after such edits."""
    stack = prefix.stack
    modules = [*stack.embed_modules(), *stack.layers[: prefix.start]]
    sums = []
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                flat = param.detach().reshape(-1)
                sums.append(flat[:: max(1, flat.numel() // 64)].double().sum())
    checksum = float(torch.stack(sums).sum()) if sums else 0.0
    config = getattr(stack.body, "config", None)
    return (
        type(stack.body).__name__,
        getattr(config, "_name_or_path", None),
        prefix.start,
        checksum,
    )


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def lower_with_cache(
    prefix: FrozenPrefix,
    rows: Rows,
    context: dict[str, Any],
    keys: Sequence[Hashable],
    cache: PrefixCache,
) -> Tensor:
    """:meth:`FrozenPrefix.lower` with rows served from ``cache`` where possible; computed
    rows are stored. Padding positions of served rows are zero (never attended to)."""
    signatures = rows.signatures()
    hits = [cache.get(key, sig) for key, sig in zip(keys, signatures, strict=True)]
    missing = [r for r, hit in enumerate(hits) if hit is None]
    if len(missing) == len(hits):
        hidden = prefix.lower(rows, context)
    else:
        hidden = _assemble(prefix, rows, hits, missing)
    if missing and not cache.full:
        _store(cache, rows, hidden, [(r, keys[r], signatures[r]) for r in missing])
    return hidden


def packed_lower_with_cache(
    prefix: FrozenPrefix,
    rows: Rows,
    packed: PackedRows,
    context: dict[str, Any],
    keys: Sequence[Hashable],
    cache: PrefixCache,
) -> Tensor:
    """Packed block-``start`` states ``[Q, L, H]`` of the unpacked ``rows``: questions whose
    rows are all cached are packed from the cache, the others are computed packed (``context``
    is the packed rows' block context) and their missing rows stored."""
    signatures = rows.signatures()
    hits = [cache.get(key, sig) for key, sig in zip(keys, signatures, strict=True)]
    missing = [r for r, hit in enumerate(hits) if hit is None]
    if len(missing) < len(hits):
        hidden = packed.pack(_served(rows, hits))
    if missing:
        questions = sorted({r // packed.num_choices for r in missing})
        if len(questions) == packed.rows.num_rows:
            hidden = prefix.lower(packed.rows, context)
        else:
            index = torch.tensor(questions, device=hidden.device)
            hidden[index] = prefix.lower(packed.rows.select(index)).to(hidden.dtype)
        if not cache.full:
            items = [(r, keys[r], signatures[r]) for r in missing]
            _store(cache, rows, packed.unpack(hidden), items)
    return hidden


def _served(rows: Rows, hits: list[Tensor | None]) -> Tensor:
    """``[R, T, H]`` with the cached rows filled in (zeros elsewhere)."""
    mask = rows.attention_mask.bool()
    served = [h for h in hits if h is not None]
    hidden = served[0].new_zeros((*mask.shape, served[0].shape[-1]), device=mask.device)
    hit = torch.tensor([h is not None for h in hits], device=mask.device)
    hidden[mask & hit[:, None]] = torch.cat(served).to(mask.device, non_blocking=True)
    return hidden


def _assemble(
    prefix: FrozenPrefix, rows: Rows, hits: list[Tensor | None], missing: list[int]
) -> Tensor:
    hidden = _served(rows, hits)
    if missing:
        index = torch.tensor(missing, device=hidden.device)
        hidden[index] = prefix.lower(rows.select(index)).to(hidden.dtype)
    return hidden


def _store(
    cache: PrefixCache, rows: Rows, hidden: Tensor, items: list[tuple[int, Hashable, Tensor]]
) -> None:
    mask = rows.attention_mask.bool()
    for r, key, signature in items:
        if not cache.put(key, signature, hidden[r][mask[r]]):
            return
