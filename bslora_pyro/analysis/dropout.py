"""Is a run's learned rank posterior more than random rank dropout at its own sparsity?

A mean-field gate posterior q(z_j = 1) = q_j that keeps a module's ranks at rate
``keep = mean_j q_j`` differs from random dropout at that rate only through which ranks
it keeps: the spread of the q_j. :func:`dropout_distance` measures it per module as
``KL(q || Bernoulli(keep)^r) = sum_j KL(Bern(q_j) || Bern(keep))`` (0 exactly when the
posterior is random dropout), next to the KL from the prior, the spread of q and the
ranks it has decided (q < 0.1 or q > 0.9). :func:`control_comparison` puts the run's
metrics beside those of matched random-dropout runs (``random_mask`` with ``match_run``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

#: mean KL per rank below which a posterior is reported as random dropout at its sparsity
INDISTINGUISHABLE = 0.01


def bernoulli_kl(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``KL(Bern(q) || Bern(p))`` elementwise, with 0 log 0 = 0."""
    q, p = np.asarray(q, dtype=np.float64), np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(q > 0, q * np.log(q / p), 0.0)
        off = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - p)), 0.0)
    return on + off


def dropout_distance(gate_posterior: dict) -> pd.DataFrame:
    """Per module (and a ``total`` row): ranks, keep rate, spread of q, decided ranks,
    KL to random dropout at the module's keep rate and KL to the prior (nats)."""
    rows = []
    for module, values in gate_posterior["posterior"].items():
        q = np.asarray(values, dtype=np.float64)
        keep = float(q.mean())
        prior = np.asarray(gate_posterior["prior"][module], dtype=np.float64)
        rows.append({
            "module": module,
            "ranks": q.size,
            "keep": keep,
            "q_sd": float(q.std()),
            "q_min": float(q.min()),
            "q_max": float(q.max()),
            "decided": int(((q < 0.1) | (q > 0.9)).sum()),
            "kl_to_dropout": float(bernoulli_kl(q, np.full_like(q, keep)).sum()),
            "kl_to_prior": float(bernoulli_kl(q, prior).sum()),
        })
    table = pd.DataFrame(rows)
    total = {"module": "total", "ranks": int(table["ranks"].sum()),
             "keep": float(np.average(table["keep"], weights=table["ranks"])),
             "q_sd": float(np.concatenate([np.asarray(v) for v in
                                           gate_posterior["posterior"].values()]).std()),
             "q_min": float(table["q_min"].min()), "q_max": float(table["q_max"].max()),
             "decided": int(table["decided"].sum()),
             "kl_to_dropout": float(table["kl_to_dropout"].sum()),
             "kl_to_prior": float(table["kl_to_prior"].sum())}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def verdict(table: pd.DataFrame) -> str:
    """One sentence: how far the posterior is from random dropout at its sparsity."""
    total = table[table["module"] == "total"].iloc[0]
    per_rank = total["kl_to_dropout"] / total["ranks"]
    head = (f"The posterior keeps {total['keep']:.1%} of {int(total['ranks'])} ranks; its KL "
            f"to random dropout at each module's rate is {total['kl_to_dropout']:.3g} nats "
            f"({per_rank:.3g} per rank; {int(total['decided'])} ranks decided)")
    if per_rank < INDISTINGUISHABLE:
        return head + ": it is random rank dropout at its own sparsity, not a selection."
    return head + ": it prefers some ranks over others."


def _metrics(run_dir: Path) -> dict[str, float]:
    from bslora_pyro.experiment import rundir

    metrics = rundir.read_metrics(run_dir)
    first = next((k for k in metrics if not k.startswith("_")), None)
    out = {"validation NLL": metrics.get("_validation", {}).get("nll", math.nan)}
    for key in ("acc", "ece", "nll"):
        out[f"{first} {key}"] = metrics.get(first, {}).get(key, math.nan) if first else math.nan
    return out


def control_comparison(run_dir: Path, controls: list[Path]) -> pd.DataFrame:
    """The run's validation NLL and first evaluation set's ACC / ECE / NLL beside the mean
    over the matched random-dropout ``controls``."""
    mine = _metrics(Path(run_dir))
    theirs = [_metrics(Path(c)) for c in controls]
    rows = []
    for key, value in mine.items():
        values = [t[key] for t in theirs if not math.isnan(t[key])]
        control = statistics.fmean(values) if values else math.nan
        rows.append({"metric": key, "this run": value, "matched dropout": control,
                     "difference": value - control})
    return pd.DataFrame(rows)


def dropout_section(run_dir: Path, controls: list[Path] | None = None) -> str:
    """The report's ``## Learned posterior vs random rank dropout`` section."""
    from bslora_pyro.analysis.summary import markdown_table
    from bslora_pyro.experiment import rundir

    table = dropout_distance(rundir.read_gate_posterior(Path(run_dir)))
    lines = ["## Learned posterior vs random rank dropout", "", verdict(table), "",
             "Per module: the keep rate (mean q(z=1)), the spread of q over ranks, the ranks "
             "with q < 0.1 or q > 0.9, KL(q || Bernoulli(keep)) (0: random dropout at that "
             "rate) and KL(q || prior), in nats.", "",
             markdown_table(table, index=False), ""]
    if controls:
        lines += [f"Against {len(controls)} matched random-dropout run(s) "
                  "(`random_mask` with `match_run`):", "",
                  markdown_table(control_comparison(Path(run_dir), controls), index=False), ""]
    return "\n".join(lines)
