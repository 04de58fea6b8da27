"""A LoRA layer whose rank-one components are multiplied by gates z in [0, 1]^r."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GateShapeError(RuntimeError):
    """The gates do not fit the rows of the batch reaching an adapted layer."""


def _in_out_features(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if type(base).__name__ == "Conv1D":  # transformers' GPT-2 projection: weight is [in, out]
        in_features, out_features = base.weight.shape
        return in_features, out_features
    raise TypeError(f"cannot adapt a {type(base).__name__}; supported: nn.Linear, Conv1D")


class GatedLoraLinear(nn.Module):
    """``y = base(x) + (alpha / r) * B diag(z) A x`` with frozen ``base``.

    ``gates`` is set from outside before a forward pass:

    * ``None``: every gate is 1 (plain LoRA);
    * shape ``[r]``: the same gates for every row;
    * shape ``[G, r]``: the leading dimension of ``x`` is split into G equal groups
      (``x.view(G, -1, ...)``) and group g uses ``gates[g]``. Scorers lay out rows
      draw-major so that G Monte Carlo draws run as one batched forward.

    ``sampled_A`` (optional, set from outside like ``gates``) replaces ``lora_A`` in the
    forward: shape ``[r, in]`` for every row or ``[G, r, in]`` for G draw-major row groups
    (per-draw factors of weight-space Bayesian baselines such as BLoB). ``None`` (default)
    uses ``lora_A``.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        in_features, out_features = _in_out_features(base)
        self.base_layer = base
        self.r = r
        self.scaling = alpha / r
        weight = base.weight
        factory = {"device": weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.gates: torch.Tensor | None = None
        self.sampled_A: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B.shape[0]

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The gated adapter output ``(alpha / r) B diag(z) A x`` alone."""
        x = self.lora_dropout(x.to(self.lora_A.dtype))
        a = self.sampled_A
        u = F.linear(x, self.lora_A) if a is None else self._project(x, a.to(x.dtype))
        gates = self.gates
        if gates is not None:
            u = self._apply_gates(u, gates.to(u.dtype))
        return self.scaling * F.linear(u, self.lora_B)

    def _project(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``A x`` with ``sampled_A``: one ``[r, in]`` matrix, or one per row group."""
        if a.dim() == 2:
            return F.linear(x, a)
        groups, rows = a.shape[0], x.shape[0]
        if x.dim() < 2 or rows % groups:
            raise GateShapeError(
                f"{groups} factor groups do not divide the {rows} rows reaching this layer; "
                "rows must be laid out draw-major (input.repeat(num_draws, ...))"
            )
        u = torch.bmm(x.reshape(groups, -1, x.shape[-1]), a.transpose(1, 2))
        return u.reshape(x.shape[:-1] + (a.shape[1],))

    def _apply_gates(self, u: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        if gates.dim() == 1:
            return u * gates
        groups = gates.shape[0]
        rows = u.shape[0]
        if u.dim() < 2 or rows % groups:
            raise GateShapeError(
                f"{groups} gate groups do not divide the {rows} rows reaching this layer; "
                "rows must be laid out draw-major (input.repeat(num_draws, ...))"
            )
        shape = (groups, rows // groups) + u.shape[1:-1] + (self.r,)
        view = (groups,) + (1,) * (u.dim() - 1) + (self.r,)
        return (u.reshape(shape) * gates.view(view)).reshape(u.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return out + self.lora_delta(x).to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling}"
