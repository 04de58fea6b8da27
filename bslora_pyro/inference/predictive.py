"""Posterior predictive: a Monte Carlo model average over hard gate draws."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Predictions:
    """Per-example predictive probabilities.

    ``probs`` [N, C] is the model average (mean of the per-draw softmax);
    ``sample_probs`` [M, N, C] keeps every draw (for mutual information); ``labels`` [N];
    ``choice_mask`` [N, C] marks real choices when questions have different counts.
    """

    probs: torch.Tensor
    sample_probs: torch.Tensor
    labels: torch.Tensor
    choice_mask: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.sample_probs.shape[0]


def _pad_choices(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    missing = width - t.shape[-1]
    return t if missing == 0 else torch.nn.functional.pad(t, (0, missing), value=value)


@torch.no_grad()
def predict(
    method,
    examples: Sequence,
    encode: Callable[[Sequence], object],
    num_samples: int = 10,
    batch_size: int = 8,
    deterministic: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> Predictions:
    """Predict every example with ``method.predict_logits`` (M draws in one forward each).

    ``deterministic`` uses the gates' posterior mean (one forward, M = 1). Draws are
    seeded so predictions are reproducible.
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("cannot predict on an empty dataset")
    if isinstance(method, torch.nn.Module):
        method.eval()
    torch.manual_seed(seed)
    batch_size = getattr(method, "predict_batch_size", None) or batch_size
    parts, labels, masks = [], [], []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, disable=not progress, desc="predict", dynamic_ncols=True):
        batch = encode(list(examples[start : start + batch_size]))
        batch = batch.to(device) if hasattr(batch, "to") else batch
        logits = method.predict_logits(batch, num_samples=num_samples, deterministic=deterministic)
        parts.append(torch.softmax(logits.float(), dim=-1).cpu())
        labels.append(batch.labels.cpu())
        mask = getattr(batch, "choice_mask", None)
        masks.append(
            torch.ones_like(parts[-1][0], dtype=torch.bool) if mask is None else mask.cpu()
        )
    width = max(p.shape[-1] for p in parts)
    sample_probs = torch.cat([_pad_choices(p, width, 0.0) for p in parts], dim=1)
    choice_mask = torch.cat([_pad_choices(m, width, False) for m in masks], dim=0)
    return Predictions(sample_probs.mean(0), sample_probs, torch.cat(labels), choice_mask)


def pyro_predictive(method, batch, num_samples: int = 10) -> torch.Tensor:
    """Posterior predictive choice probabilities ``[M, B, C]`` through
    ``pyro.infer.Predictive`` on the method's model and guide: one Predictive sample whose
    guide draws ``num_samples`` hard gate sets, scored in one batched forward (the model's
    deterministic site ``probs``). Same numbers as ``predict_logits`` under the same seed."""
    from pyro.infer import Predictive

    index = torch.arange(batch.num_examples)
    run = Predictive(method.model, guide=method.guide, num_samples=1, return_sites=("probs",))
    with torch.no_grad():
        out = run(batch, index, batch.num_examples, num_samples, hard=True)
    return out["probs"].reshape(out["probs"].shape[-3:])  # Predictive adds sample dims
