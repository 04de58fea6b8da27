"""Posterior predictive: a Monte Carlo model average over posterior draws, kept in logs.

Every quantity is held as a log-probability, so that the negative log-likelihood of a
confidently wrong prediction is exact (a probability of 1e-60 is a loss of 138 nats, not
the float32 underflow to 0 or a clipped 27.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: the label of an example that has none (an out-of-distribution set scored for detection)
NO_LABEL = -1


@dataclass
class LogitGaussian:
    """A Gaussian over each example's choice logits (a linearised predictive, e.g. Laplace's):
    ``mean`` [N, C], ``covariance`` [N, C, C]. Its predictive ``E[softmax(f / T)]`` is a
    Monte Carlo average over ``draws`` standard-normal draws fixed by ``seed`` (common random
    numbers: the same draws for every temperature, so a fitted T is a smooth optimum)."""

    mean: torch.Tensor
    covariance: torch.Tensor
    draws: int = 100_000
    seed: int = 0
    chunk: int = 16

    def root(self) -> torch.Tensor:
        """A square root ``L`` of every covariance, ``L L^T = Sigma`` ([N, C, C], float64)."""
        values, vectors = torch.linalg.eigh(self.covariance.double())
        return vectors * values.clamp_min(0).sqrt().unsqueeze(-2)

    def log_probs(self, choice_mask: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                  draws: int | None = None) -> torch.Tensor:
        """``log E[softmax(f / T)]`` [N, C] (differentiable in ``temperature``), over
        ``draws`` (default: :attr:`draws`) draws."""
        generator = torch.Generator().manual_seed(self.seed)
        root, mean = self.root(), self.mean.double()
        draws = draws or self.draws
        out = []
        for start in range(0, mean.shape[0], self.chunk):
            part = slice(start, start + self.chunk)
            noise = torch.randn(draws, mean.shape[-1], generator=generator, dtype=torch.float64)
            logits = mean[part] + torch.einsum("ncd,sd->snc", root[part], noise)
            logits = torch.where(choice_mask[part], logits / temperature, -torch.inf)
            out.append(log_mean(torch.log_softmax(logits, dim=-1)))
        return torch.cat(out)


@dataclass
class Predictions:
    """Per-example predictive log-probabilities.

    ``log_probs`` [N, C] is the log of the model average, ``log(mean_m p_m)``;
    ``sample_log_probs`` [M', N, C] keeps M' draws (for mutual information; M' = M except
    for predictives whose average is computed from many more draws than are kept, such as
    Laplace's linearised one); ``labels`` [N] (``NO_LABEL`` for an unlabelled example);
    ``choice_mask`` [N, C] marks real choices (missing ones have log-probability -inf);
    ``logit_gaussian``: the Gaussian over logits that ``log_probs`` averages, when the
    predictive is one (kept so that a temperature can be applied to it exactly).
    """

    log_probs: torch.Tensor
    sample_log_probs: torch.Tensor
    labels: torch.Tensor
    choice_mask: torch.Tensor
    logit_gaussian: LogitGaussian | None = None

    @property
    def probs(self) -> torch.Tensor:
        """The model average's probabilities [N, C]."""
        return self.log_probs.exp()

    @property
    def sample_probs(self) -> torch.Tensor:
        """Every kept draw's probabilities [M', N, C]."""
        return self.sample_log_probs.exp()

    @property
    def num_samples(self) -> int:
        return self.sample_log_probs.shape[0]

    @property
    def labelled(self) -> bool:
        """Whether every example has a label (else the set is scored for OOD detection only)."""
        return bool((self.labels != NO_LABEL).all())

    @classmethod
    def from_sample_log_probs(cls, sample_log_probs: torch.Tensor, labels: torch.Tensor,
                              choice_mask: torch.Tensor) -> Predictions:
        """The model average of equally weighted draws ``[M, N, C]``."""
        return cls(log_mean(sample_log_probs), sample_log_probs, labels, choice_mask)


def log_mean(sample_log_probs: torch.Tensor) -> torch.Tensor:
    """``log(mean_m exp(x_m))`` over the first dimension, exact for any spread of values."""
    draws = sample_log_probs.shape[0]
    return torch.logsumexp(sample_log_probs, dim=0) - math.log(draws)


def log_softmax_choices(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the choices in float32 (float64 inputs keep their precision)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1)


def method_log_probs(method, batch, num_samples: int, deterministic: bool):
    """``(log_mean [B, C], sample_log_probs [M, B, C])`` of ``method`` on ``batch``: the
    log-softmax of its ``predict_logits``, averaged in logs."""
    logits = method.predict_logits(batch, num_samples=num_samples, deterministic=deterministic)
    samples = log_softmax_choices(logits)
    return log_mean(samples), samples


def gaussian_draws(mean: torch.Tensor, covariance: torch.Tensor, num_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` draws of logits ``[M, B, C]`` from per-example Gaussians."""
    root = LogitGaussian(mean, covariance).root().to(mean.dtype)
    noise = torch.randn(num_samples, *mean.shape, generator=generator, dtype=mean.dtype)
    return mean + torch.einsum("bcd,mbd->mbc", root, noise)


def _pad_choices(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    missing = width - t.shape[-1]
    return t if missing == 0 else torch.nn.functional.pad(t, (0, missing), value=value)


def _pad_square(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-1]
    return t if missing == 0 else torch.nn.functional.pad(t, (0, missing, 0, missing))


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
    """Predict every example with the method's predictive (M draws in one forward each).

    ``deterministic`` uses the posterior mean (one forward, M = 1). A method with a
    Gaussian predictive over logits (``logit_gaussian(batch) -> (mean, covariance)``, e.g.
    Laplace's linearised one) is averaged over its ``predictive_draws`` logit draws, of
    which M are kept for mutual information. Draws are seeded so predictions are
    reproducible.
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("cannot predict on an empty dataset")
    if isinstance(method, torch.nn.Module):
        method.eval()
    torch.manual_seed(seed)
    gaussian = None if deterministic else getattr(method, "logit_gaussian", None)
    batch_size = getattr(method, "predict_batch_size", None) or batch_size
    means, samples, labels, masks, moments = [], [], [], [], []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, disable=not progress, desc="predict", dynamic_ncols=True):
        batch = encode(list(examples[start : start + batch_size]))
        batch = batch.to(device) if hasattr(batch, "to") else batch
        if gaussian is not None:
            mean, covariance = (t.detach().double().cpu() for t in gaussian(batch))
            moments.append((mean, covariance))
            sample = log_softmax_choices(gaussian_draws(mean, covariance, num_samples)).float()
            mean = log_mean(sample)  # replaced by the many-draw average below
        else:
            mean, sample = method_log_probs(method, batch, num_samples, deterministic)
        mask = getattr(batch, "choice_mask", None)
        mask = torch.ones_like(mean, dtype=torch.bool) if mask is None else mask.cpu()
        # missing choices: probability exactly 0 (their finite fill logit leaves ~1e-38)
        means.append(mean.cpu().masked_fill(~mask, -torch.inf))
        samples.append(sample.cpu().masked_fill(~mask, -torch.inf))
        labels.append(batch.labels.cpu())
        masks.append(mask)
    width = max(m.shape[-1] for m in means)
    preds = Predictions(
        torch.cat([_pad_choices(m, width, -torch.inf) for m in means], dim=0),
        torch.cat([_pad_choices(s, width, -torch.inf) for s in samples], dim=1),
        torch.cat(labels),
        torch.cat([_pad_choices(m, width, False) for m in masks], dim=0),
    )
    if moments:
        preds.logit_gaussian = LogitGaussian(
            torch.cat([_pad_choices(m, width, 0.0) for m, _ in moments]),
            torch.cat([_pad_square(c, width) for _, c in moments]),
            draws=int(getattr(method, "predictive_draws", LogitGaussian.draws)),
            seed=seed,
        )
        preds.log_probs = preds.logit_gaussian.log_probs(preds.choice_mask).float()
    return preds


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
