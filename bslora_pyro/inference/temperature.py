"""Post-hoc temperature scaling of any method's predictive, fitted on a validation split.

Each draw's probabilities are tempered, ``softmax(log p_m / T)`` (the same as dividing that
draw's logits by T), and then averaged over the draws, so for a point estimate (M = 1) this
is classic temperature scaling and for a Bayesian model average it scales every member
alike. ``T`` minimises the NLL of the tempered model average on the validation split.
"""

from __future__ import annotations

import torch

from bslora_pyro.inference.predictive import Predictions


def temper(preds: Predictions, temperature: float | torch.Tensor) -> Predictions:
    """``preds`` with every draw's logits divided by ``temperature``."""
    sample = _tempered_samples(preds, torch.as_tensor(temperature, dtype=torch.float64))
    sample = sample.to(preds.sample_probs.dtype)
    return Predictions(sample.mean(0), sample, preds.labels, preds.choice_mask)


def _tempered_samples(preds: Predictions, temperature: torch.Tensor) -> torch.Tensor:
    log_p = preds.sample_probs.double().clamp_min(1e-300).log()
    # missing choices stay at probability 0; ``where`` keeps their constant -inf out of the
    # gradient (dividing -inf by T would make d/dT NaN)
    scaled = torch.where(preds.choice_mask, log_p / temperature, -torch.inf)
    return torch.softmax(scaled, dim=-1)


def fit_temperature(preds: Predictions, max_iter: int = 100) -> dict:
    """The temperature minimising the NLL of the tempered model average on ``preds`` (a
    validation split), by LBFGS on log T; returns it with the NLL before and after."""
    labels = preds.labels.long()

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        probs = _tempered_samples(preds, log_t.exp()).mean(0)
        picked = probs.gather(1, labels[:, None]).squeeze(1)
        return -picked.clamp_min(1e-300).log().mean()

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll(log_t)
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(nll(torch.zeros((), dtype=torch.float64)))
    optimizer.step(closure)
    with torch.no_grad():
        after = float(nll(log_t))
    if not after <= before:  # LBFGS wandered off: T = 1 is the better fit
        log_t = torch.zeros((), dtype=torch.float64)
        after = before
    return {"temperature": float(log_t.detach().exp()), "validation_nll_before": before,
            "validation_nll_after": after, "validation_size": len(labels)}
