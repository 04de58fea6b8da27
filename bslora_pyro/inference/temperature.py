"""Post-hoc temperature scaling of any method's predictive, fitted on a validation split.

Each draw's probabilities are tempered, ``softmax(log p_m / T)`` (the same as dividing that
draw's logits by T), and then averaged over the draws, so for a point estimate (M = 1) this
is classic temperature scaling and for a Bayesian model average it scales every member
alike. ``T`` minimises the NLL of the tempered model average on the validation split. A
Gaussian predictive over logits (Laplace's linearised one) is tempered exactly: its logit
draws are divided by T and averaged again with the same common random numbers.
"""

from __future__ import annotations

import torch

from bslora_pyro.inference.predictive import Predictions, log_mean


def temper(preds: Predictions, temperature: float | torch.Tensor) -> Predictions:
    """``preds`` with every draw's logits divided by ``temperature``."""
    sample = _tempered_samples(preds, torch.as_tensor(temperature, dtype=torch.float64))
    sample = sample.to(preds.sample_log_probs.dtype)
    tempered = Predictions.from_sample_log_probs(sample, preds.labels, preds.choice_mask)
    if preds.logit_gaussian is not None:
        tempered.logit_gaussian = preds.logit_gaussian
        tempered.log_probs = _tempered_average(preds, torch.as_tensor(
            temperature, dtype=torch.float64)).to(tempered.log_probs.dtype)
    return tempered


#: logit draws per example of a Gaussian predictive while its temperature is fitted (the
#: optimum of a smooth one-parameter fit; the fitted T is then applied with all draws)
FIT_DRAWS = 2_000


def _tempered_average(preds: Predictions, temperature: torch.Tensor,
                      draws: int | None = None) -> torch.Tensor:
    """The log of the tempered model average [N, C] (float64); a Gaussian predictive over
    ``draws`` logit draws (default: all of its own)."""
    if preds.logit_gaussian is not None:
        return preds.logit_gaussian.log_probs(preds.choice_mask, temperature, draws)
    mask = preds.choice_mask
    # a missing choice is -inf in every draw: averaged as a finite stand-in, so that the
    # log-sum-exp's gradient there is 0 rather than NaN, then set back to -inf
    samples = torch.where(mask, _tempered_samples(preds, temperature), -1e30)
    return log_mean(samples).masked_fill(~mask, -torch.inf)


def _tempered_samples(preds: Predictions, temperature: torch.Tensor) -> torch.Tensor:
    """Every draw's tempered log-probabilities (float64)."""
    mask = preds.choice_mask
    # missing choices stay at probability 0; their -inf is replaced before the division
    # (dividing -inf by T would make d/dT NaN even in the branch ``where`` discards)
    log_p = torch.where(mask, preds.sample_log_probs.double(), 0.0)
    scaled = torch.where(mask, log_p / temperature, -torch.inf)
    return torch.log_softmax(scaled, dim=-1)


def fit_temperature(preds: Predictions, max_iter: int = 100) -> dict:
    """The temperature minimising the NLL of the tempered model average on ``preds`` (a
    validation split), by LBFGS on log T; returns it with the NLL before and after (a
    Gaussian predictive is fitted on :data:`FIT_DRAWS` of its draws, and its NLLs are
    reported over all of them)."""
    labels = preds.labels.long()

    def nll(log_t: torch.Tensor, draws: int | None = FIT_DRAWS) -> torch.Tensor:
        log_probs = _tempered_average(preds, log_t.exp(), draws)
        return -log_probs.gather(1, labels[:, None]).mean()

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll(log_t)
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(nll(torch.zeros((), dtype=torch.float64), None))
    optimizer.step(closure)
    with torch.no_grad():
        after = float(nll(log_t, None))
    if not after <= before:  # LBFGS wandered off: T = 1 is the better fit
        log_t = torch.zeros((), dtype=torch.float64)
        after = before
    return {"temperature": float(log_t.detach().exp()), "validation_nll_before": before,
            "validation_nll_after": after, "validation_size": len(labels)}
