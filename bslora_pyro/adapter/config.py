"""Which modules get a gated LoRA adapter, and its shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bslora_pyro.typed import PositiveFloat, PositiveInt, UnitFloat, check_ranges


class AdapterConfigError(ValueError):
    """An adapter setting that cannot be applied to the model."""


@dataclass
class AdapterConfig:
    """Gated LoRA settings.

    Args:
        r: rank of every adapter (number of gated rank-one components).
        alpha: LoRA scale numerator; the update is ``(alpha / r) * B diag(z) A``.
        target_modules: module names matched on the last path component (``["q_proj",
            "v_proj", "lm_head"]``) or one regular expression matched on the full path.
        layers: restrict to these transformer blocks: a list of indices (negative counts
            from the top) or a slice string such as ``"-4:"``; modules outside any block
            (``lm_head``) are always kept.
        dropout: LoRA dropout on the adapter input (0 = none, the paper's setting).
        trainable_modules: extra modules trained as point estimates (task heads), by
            last path component, e.g. ``["classifier"]``.
    """

    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: list[int] | str | None = None
    dropout: UnitFloat = 0.0
    trainable_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_ranges(self, "adapter", AdapterConfigError)
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise AdapterConfigError("adapter.target_modules is empty")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return asdict(self)
