"""Tables of a run's posterior: az.summary of active ranks and KL(q || p), one row per
module, predictive uncertainty per evaluation set, and the report sections."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bslora_pyro import metrics as M
from bslora_pyro.analysis.inference_data import az
from bslora_pyro.persistence import atomic_write_text

SUMMARY_CSV = "gate_summary.csv"
MODULES_CSV = "gate_modules.csv"
SUMMARY_MD = "gate_summary.md"


def summary_vars(idata) -> list[str]:
    """Posterior variables summarised: expected active ranks and KL, per module and total."""
    return [str(v) for v in idata.posterior.data_vars if str(v).startswith(("active_ranks", "kl"))]


def gate_summary(idata, hdi_prob: float = 0.94) -> pd.DataFrame:
    """``az.summary`` (mean, sd, HDI) of active ranks and KL per (module type, layer).

    The sd of a closed-form KL is 0: it does not depend on the draw.
    """
    prob = {"hdi_prob": hdi_prob} if az.__version__.startswith("0.") else {"ci_prob": hdi_prob}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells of the grid
        table = az.summary(idata, var_names=summary_vars(idata), kind="stats", round_to="none",
                           **prob)
    return table.dropna(how="all")


def _module_row(module: str, layer, q, p, kl) -> dict:
    kl = np.asarray(kl, dtype=float).ravel()
    return {
        "module": module,
        "layer": "" if layer is None else int(layer),
        "rank": int(np.sum(~np.isnan(q))),
        "prior_active_ranks": float(np.nansum(p)),
        "active_ranks": float(np.nansum(q)),
        "max_abs_shift": float(np.nanmax(np.abs(q - p))),
        "kl": float(kl.mean()),
        "kl_mcse": float(kl.std(ddof=1) / math.sqrt(kl.size)) if kl.size > 1 else 0.0,
    }


def module_table(idata) -> pd.DataFrame:
    """Per module: E[active ranks] under the prior and q, the largest |q - p| of a rank, and
    KL(q || p) with its Monte Carlo standard error (0 for closed-form KLs)."""
    const, post = idata.constant_data, idata.posterior
    rows = []
    for name in map(str, const.data_vars):
        if not name.startswith("inclusion_prob"):
            continue
        suffix = name[len("inclusion_prob") :]
        q, p, kl = const[name], const[f"prior_{name}"], post[f"kl{suffix}"]
        if "module_type" not in q.dims:
            rows.append(_module_row(suffix[1:], None, q.values, p.values, kl.values))
            continue
        for kind in q.module_type.values:
            for layer in q.layer.values:
                cell = {"module_type": kind, "layer": layer}
                q_cell = q.sel(cell).values
                if not np.isnan(q_cell).all():
                    rows.append(_module_row(str(kind), layer, q_cell, p.sel(cell).values,
                                            kl.sel(cell).values))
    return pd.DataFrame(rows)


def _cell(value) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (floats to 4 significant digits)."""
    frame = table.reset_index() if index else table
    header = [str(c) if str(c) != "index" else "" for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def write_gate_tables(idata, run_dir: Path) -> list[Path]:
    """``gate_summary.csv`` (az.summary), ``gate_modules.csv`` and both in ``gate_summary.md``."""
    summary, modules = gate_summary(idata), module_table(idata)
    paths = [run_dir / SUMMARY_CSV, run_dir / MODULES_CSV, run_dir / SUMMARY_MD]
    atomic_write_text(paths[0], summary.to_csv())
    atomic_write_text(paths[1], modules.to_csv(index=False))
    text = [
        "# Gate posterior summary", "",
        "Active ranks (sum of gates) and KL(q || p) per draw of the guide: mean, sd and HDI.",
        "", markdown_table(summary), "",
        "Per module: expected active ranks under the prior and under q, the largest shift "
        "|q(z=1) - P(z=1)| of a rank, and KL(q || p) with its Monte Carlo standard error.",
        "", markdown_table(modules, index=False), "",
    ]
    atomic_write_text(paths[2], "\n".join(text))
    return paths


def uncertainty_table(sets: dict) -> pd.DataFrame:
    """Per evaluation set: accuracy, mean predictive entropy and mutual information, AURC
    (accuracy and AURC blank for an unlabelled set)."""
    rows = []
    for label, preds in sets.items():
        probs, labels = preds.probs.numpy(), preds.labels.numpy()
        labelled = preds.labelled
        rows.append({
            "set": label,
            "n": len(labels),
            "acc": M.accuracy(probs, labels) if labelled else float("nan"),
            "entropy": float(M.predictive_entropy(probs).mean()),
            "mutual_information": float(M.mutual_information(preds.sample_probs.numpy()).mean()),
            "aurc": M.area_under_risk_coverage(probs, labels) if labelled else float("nan"),
        })
    return pd.DataFrame(rows)


def _images(figures: dict[str, Path | None]) -> list[str]:
    return [f"![{alt}]({path.name})" for alt, path in figures.items() if path is not None]


def gate_section(idata, figures: dict[str, Path | None]) -> str:
    """The report's ``## Gate posterior`` section: plots, then the summary table."""
    attrs = idata.posterior.attrs
    draws = idata.posterior.sizes["draw"]
    lines = [
        "## Gate posterior", "",
        f"Prior `{attrs.get('prior')}` {attrs.get('prior_hyperparameters', '')}; {draws} "
        f"draws of the guide in [posterior.nc](posterior.nc) (ArviZ InferenceData).", "",
        *_images(figures), "",
        f"Full tables: [{SUMMARY_MD}]({SUMMARY_MD}), [{SUMMARY_CSV}]({SUMMARY_CSV}), "
        f"[{MODULES_CSV}]({MODULES_CSV}).", "",
        markdown_table(module_table(idata), index=False), "",
    ]
    return "\n".join(lines)


def no_gates_section(method: str) -> str:
    return (f"## Gate posterior\n\nMethod `{method}` has no rank gates: the gate posterior, "
            "its summary tables and heatmaps are skipped.\n")


def predictive_section(sets: dict, figures: dict[str, Path | None]) -> str:
    """The report's ``## Predictive uncertainty`` section."""
    lines = ["## Predictive uncertainty", "",
             "The first set is in-distribution; the others are shifted.", "",
             markdown_table(uncertainty_table(sets), index=False), "", *_images(figures), ""]
    return "\n".join(lines)
