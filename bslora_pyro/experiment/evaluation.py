"""Metrics of one evaluation set, with OOD and selective-prediction scores."""

from __future__ import annotations

from bslora_pyro import metrics as M
from bslora_pyro.inference.predictive import Predictions


def set_metrics(preds: Predictions, reference: Predictions | None = None) -> dict:
    """ACC / ECE / NLL / Brier, area under the risk-coverage curve, and when a
    ``reference`` (in-distribution) set is given, OOD AUROC from predictive entropy and
    from mutual information (this set = out-of-distribution)."""
    probs, labels = preds.probs.numpy(), preds.labels.numpy()
    out = M.summarize(probs, labels)
    out["num_samples"] = preds.num_samples
    out["aurc"] = float(M.area_under_risk_coverage(probs, labels))
    out["mean_entropy"] = float(M.predictive_entropy(probs).mean())
    out["mean_mutual_information"] = float(M.mutual_information(preds.sample_probs.numpy()).mean())
    if reference is not None:
        ent_in = M.predictive_entropy(reference.probs.numpy())
        ent_out = M.predictive_entropy(probs)
        mi_in = M.mutual_information(reference.sample_probs.numpy())
        mi_out = M.mutual_information(preds.sample_probs.numpy())
        out["ood_auroc_entropy"] = float(M.auroc(ent_in, ent_out))
        out["ood_auroc_mi"] = float(M.auroc(mi_in, mi_out))
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in out.items()}
