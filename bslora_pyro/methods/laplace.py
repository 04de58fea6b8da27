"""Laplace-LoRA: a post-hoc diagonal Laplace approximation over the LoRA factors.

Training is plain LoRA (MLE, or MAP with the ``weight_decay`` option). Afterwards the
runner calls ``fit_posthoc(train_examples, encode)``, which (computed here, without
laplace-torch):

1. sums over the training set the diagonal of the generalised Gauss-Newton matrix, which
   for a softmax likelihood equals the expected Fisher: per example the logit Jacobian
   ``J`` (one backward pass per choice, as for prediction), then
   ``h += sum_c p_c (J_c - sum_k p_k J_k)^2``, i.e. ``sum_c p_c (d log p_c / d theta)^2``
   (exact in the labels, not the empirical Fisher);
2. picks the precision ``delta`` of the prior ``theta ~ N(0, 1 / delta)`` that maximises
   the Laplace log marginal likelihood ``log p(D | theta*) - delta ||theta*||^2 / 2
   + (P / 2) log delta - sum_i log(h_i + delta) / 2``; it is concave in ``delta``, so the
   unique maximiser is found by bisection on its derivative;
3. keeps the posterior ``N(theta*, diag(1 / (h + delta)))``.

Prediction (``predictive``):

- ``"linearised"`` (default, as in Laplace-LoRA): the logits are linearised around
  ``theta*``, ``f(theta) ~ f(theta*) + J (theta - theta*)``, so per question they are
  Gaussian with mean ``f(theta*)`` and covariance ``J diag(sigma^2) J^T``
  (:meth:`LaplaceLora.logit_gaussian`). The predictive ``E[softmax f]`` is a Monte Carlo
  average over ``predictive_draws`` logit draws (100,000 by default, as the reference
  code does; C-dimensional Gaussians cost nothing once ``J`` exists), independent of
  ``predict.num_samples``, which only sets how many of the draws are kept for mutual
  information. ``J`` takes one backward pass per choice, so questions are predicted one
  at a time (:attr:`LaplaceLora.predict_batch_size`).
- ``"sample"``: M draws of the factors from the posterior, one forward each. Known to
  underfit for a GGN posterior (the network is not linear over the posterior's width).

K-FAC is not implemented. ``subset="last_layer"`` restricts the Laplace to the last
adapted module (still diagonal).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.persistence import copy_tensors
from bslora_pyro.typed import NonNegativeFloat, PositiveFloat, PositiveInt

NAME = "laplace"
SUBSETS = ("all", "last_layer")
PREDICTIVES = ("linearised", "sample")


@dataclass
class LaplaceOptions(MethodOptions):
    """``subset`` ("all" or "last_layer"), ``prior_precision`` (None = tuned by marginal
    likelihood), ``weight_decay`` (None = the training config's; > 0 = MAP),
    ``predictive`` ("linearised" or "sample"), ``predictive_draws`` (logit draws of the
    linearised predictive's average, default 100,000)."""

    subset: str = "all"
    prior_precision: PositiveFloat | None = None
    weight_decay: NonNegativeFloat | None = None
    predictive: str = "linearised"
    predictive_draws: PositiveInt = 100_000

    def check(self, adapter: AdapterConfig | None) -> None:
        if self.subset not in SUBSETS:
            raise MethodError(f"laplace.subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.predictive not in PREDICTIVES:
            raise MethodError(
                f"laplace.predictive must be one of {PREDICTIVES}, got {self.predictive!r}"
            )


OPTIONS = LaplaceOptions


class LaplaceLora(PlainLora):
    def __init__(
        self,
        backbone,
        scorer,
        adapter,
        subset: str,
        prior_precision: float | None,
        weight_decay: float | None,
        predictive: str = "linearised",
        predictive_draws: int = 100_000,
    ) -> None:
        super().__init__(backbone, scorer, adapter, weight_decay=weight_decay, name=NAME)
        self.subset = subset
        self.predictive = predictive
        self.predictive_draws = predictive_draws
        self.fixed_prior_precision = prior_precision
        self.prior_precision: float | None = None
        self.log_likelihood: float | None = None
        self.hessian: dict[str, torch.Tensor] | None = None

    def laplace_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The factors under the Laplace approximation, by name."""
        names = list(self.adapters) if self.subset == "all" else list(self.adapters)[-1:]
        return {
            f"{name}.{leaf}": getattr(self.adapters[name], leaf)
            for name in names
            for leaf in ("lora_A", "lora_B")
        }

    # --- fitting ----------------------------------------------------------------------
    def fit_posthoc(self, examples: Sequence, encode: Callable[[Sequence], object]) -> dict:
        """Diagonal GGN over ``examples`` (the training set), then the prior precision."""
        if not examples:
            raise ValueError("cannot fit a Laplace approximation on an empty dataset")
        params = self.laplace_parameters()
        hessian, log_likelihood = None, 0.0
        self.eval()
        for example in examples:
            logits, jacobian = self.logit_jacobian(encode([example]))
            valid = example.num_choices
            log_p = torch.log_softmax(logits[0, :valid], dim=-1)
            probs = log_p.exp()
            log_likelihood += float(log_p[example.label])
            scores = jacobian[0, :valid] - probs @ jacobian[0, :valid]  # d log p_c / d theta
            term = probs @ scores.square()
            hessian = term if hessian is None else hessian.add_(term)
        sizes = [p.numel() for p in params.values()]
        self.hessian = {
            name: h.view_as(p).clone()  # own storage: safetensors refuses shared tensors
            for (name, p), h in zip(params.items(), hessian.split(sizes), strict=True)
        }
        self.log_likelihood = log_likelihood
        self.prior_precision = self.fixed_prior_precision or self.tune_prior_precision()
        return {
            "prior_precision": self.prior_precision,
            "log_marginal_likelihood": self.log_marginal_likelihood(self.prior_precision),
        }

    def _flat(self) -> tuple[torch.Tensor, float, int]:
        if self.hessian is None:
            raise MethodError("laplace: call fit_posthoc(train_examples, encode) first")
        h = torch.cat([t.flatten() for t in self.hessian.values()]).double().cpu()
        sq = sum(
            float(p.detach().double().square().sum()) for p in self.laplace_parameters().values()
        )
        return h, sq, h.numel()

    def log_marginal_likelihood(self, prior_precision: float) -> float:
        """The Laplace approximation of ``log p(D | delta)`` at ``delta = prior_precision``."""
        h, sq, size = self._flat()
        delta = float(prior_precision)
        return (
            self.log_likelihood
            - 0.5 * delta * sq
            + 0.5 * size * math.log(delta)
            - 0.5 * float(torch.log(h + delta).sum())
        )

    def marginal_likelihood_gradient(self, prior_precision: float) -> float:
        """``d log p(D | delta) / d delta`` (decreasing in ``delta``: zero at the optimum)."""
        h, sq, size = self._flat()
        delta = float(prior_precision)
        return 0.5 * (size / delta - float((1.0 / (h + delta)).sum()) - sq)

    def tune_prior_precision(self, low: float = 1e-8, high: float = 1e12) -> float:
        """The maximiser of the log marginal likelihood in ``[low, high]`` (bisection)."""
        if self.marginal_likelihood_gradient(high) >= 0:
            return high
        if self.marginal_likelihood_gradient(low) <= 0:
            return low
        lo, hi = math.log(low), math.log(high)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.marginal_likelihood_gradient(math.exp(mid)) > 0:
                lo = mid
            else:
                hi = mid
        return math.exp(0.5 * (lo + hi))

    def posterior_variance(self) -> dict[str, torch.Tensor]:
        """Diagonal posterior variances ``1 / (h + delta)``, by factor name."""
        if self.hessian is None or self.prior_precision is None:
            raise MethodError("laplace: call fit_posthoc(train_examples, encode) first")
        return {k: 1.0 / (h + self.prior_precision) for k, h in self.hessian.items()}

    # --- prediction ---------------------------------------------------------------------
    @property
    def predict_batch_size(self) -> int | None:
        """Questions per predictive batch: 1 for the linearised predictive (its Jacobian
        needs one backward pass per choice and question), else the caller's choice."""
        return 1 if self.predictive == "linearised" else None

    def logit_jacobian(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` at the posterior mean and their Jacobian ``[B, C, P]`` with
        respect to the flattened Laplace parameters (zero rows for padded choices)."""
        tensors = list(self.laplace_parameters().values())
        self.prepare(1, sample=False)
        with torch.enable_grad():
            logits = self.scorer.logits(self.backbone, batch, 1)[0]
            size = sum(t.numel() for t in tensors)
            jacobian = logits.new_zeros(*logits.shape, size)
            mask = batch.choice_mask.to(logits.device)
            pairs = mask.nonzero().tolist()
            for k, (b, c) in enumerate(pairs):
                grads = torch.autograd.grad(
                    logits[b, c], tensors, retain_graph=k < len(pairs) - 1, allow_unused=True
                )
                jacobian[b, c] = torch.cat([
                    t.new_zeros(t.numel()) if g is None else g.flatten()
                    for g, t in zip(grads, tensors, strict=True)
                ])
        return logits.detach(), jacobian

    def logit_distribution(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearised predictive: logit means ``[B, C]`` and covariances ``[B, C, C]``."""
        variance = torch.cat([v.flatten() for v in self.posterior_variance().values()])
        mean, jacobian = self.logit_jacobian(batch)
        variance = variance.to(jacobian)
        covariance = torch.einsum("bcp,p,bdp->bcd", jacobian, variance, jacobian)
        return mean, covariance

    @property
    def logit_gaussian(self):
        """The Gaussian over logits the predictive averages (``batch -> (mean, cov)``, see
        :func:`~bslora_pyro.inference.predictive.predict`); ``None`` with the sampling
        predictive."""
        return self.logit_distribution if self.predictive == "linearised" else None

    @torch.no_grad()
    def predict_logits(self, batch, num_samples: int = 1, deterministic: bool = False):
        """``[M, B, C]`` logits under M posterior draws, or ``[1, B, C]`` at the mean. (The
        predictive of the linearised Laplace averages far more logit draws than M: see
        :attr:`logit_gaussian`.)"""
        if deterministic:
            return super().predict_logits(batch, 1, True)
        if self.predictive == "linearised":
            from bslora_pyro.inference.predictive import gaussian_draws

            mean, covariance = self.logit_distribution(batch)
            return gaussian_draws(mean, covariance, num_samples)
        params = self.laplace_parameters()
        stds = {k: v.sqrt() for k, v in self.posterior_variance().items()}
        means = {k: p.detach().clone() for k, p in params.items()}
        draws = []
        try:
            for _ in range(num_samples):
                for k, p in params.items():
                    p.copy_(means[k] + stds[k] * torch.randn_like(p))
                draws.append(super().predict_logits(batch, 1, True))
        finally:
            for k, p in params.items():
                p.copy_(means[k])
        return torch.cat(draws)

    # --- save / load ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = super().state_tensors()
        state.update({f"hessian/{k}": v for k, v in (self.hessian or {}).items()})
        return state

    def state_extra(self) -> dict:
        return {"prior_precision": self.prior_precision, "log_likelihood": self.log_likelihood}

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        if extra.get("prior_precision") is not None:
            self.hessian = {k: torch.zeros_like(p) for k, p in self.laplace_parameters().items()}
            self.prior_precision = float(extra["prior_precision"])
            self.log_likelihood = extra.get("log_likelihood")
        copy_tensors(self.state_tensors(), tensors)


def build(backbone, scorer, adapter, options: dict) -> LaplaceLora:
    """Options: see :class:`LaplaceOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    method = LaplaceLora(
        backbone,
        scorer,
        adapter,
        opts.subset,
        opts.prior_precision,
        opts.weight_decay,
        opts.predictive,
        opts.predictive_draws,
    )
    # the options as given (method.json has always stored them so), defaults filled in
    method.options = {**dataclasses.asdict(LaplaceOptions()), **options}
    return method


def load(directory: str | Path, backbone, scorer) -> LaplaceLora:
    return load_method(NAME, build, directory, backbone, scorer)
