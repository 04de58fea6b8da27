"""Trainable-parameter accounting against plain LoRA."""

from __future__ import annotations


def count_parameters(method) -> dict[str, int]:
    """Trainable parameters of a :class:`BayesianLora` next to the plain-LoRA count.

    ``extra`` is what the Bayesian gates add over plain LoRA with the same factors and
    heads: r per adapted module for the ``bernoulli`` prior (its gate logits), plus the
    variational parameters of inclusion probabilities for Beta-process priors.
    """
    lora = sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in method.adapters.values())
    factors = sum(p.numel() for p in method.factor_parameters().values())
    gates = sum(p.numel() for p in method.gate_parameters().values())
    return {
        "adapted_modules": len(method.adapters),
        "lora_factors": lora,
        "task_head": factors - lora,
        "plain_lora": factors,
        "variational": gates,
        "total_trainable": factors + gates,
        "extra": gates,
    }
