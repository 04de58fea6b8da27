"""Posterior analysis of a saved run: ArviZ gate posterior, tables, plots and report.

``analyze_run(run_dir)`` regenerates everything from the run directory: it rebuilds the
method from ``config.yaml`` and ``weights/``, samples its guide into ``posterior.nc``
(:mod:`.inference_data`), writes the summary tables (:mod:`.summary`) and the PNGs
(:mod:`.plots`), and rewrites ``report.md`` with a ``## Gate posterior`` section. Methods
without gates (``mle``, ``zero_shot``) get the predictive plots only.
"""

from __future__ import annotations

from pathlib import Path

from bslora_pyro.analysis import plots, summary
from bslora_pyro.analysis.dropout import dropout_section
from bslora_pyro.analysis.inference_data import (
    POSTERIOR_FILE,
    build_inference_data,
    load_inference_data,
    save_inference_data,
)
from bslora_pyro.models import GatePrior

GATE_FIGURES = {"q(z=1) per layer and rank": "gate_heatmap.png",
                "expected active ranks over training": "active_ranks.png"}
PREDICTIVE_FIGURES = {"risk-coverage": "risk_coverage.png",
                      "entropy and mutual information": "uncertainty.png",
                      "training curves": "training_curves.png"}
GATE_FILES = (POSTERIOR_FILE, summary.SUMMARY_CSV, summary.MODULES_CSV, summary.SUMMARY_MD,
              *GATE_FIGURES.values())


def _save(fig, path: Path, written: list[Path]) -> Path | None:
    if fig is None:
        path.unlink(missing_ok=True)
        return None
    written.append(plots.save_figure(fig, path))
    return path


def analyze_run(run_dir: str | Path, num_draws: int = 2000, seed: int | None = None,
                controls: list[Path] | None = None) -> list[Path]:
    """Write the posterior analysis files of a run directory; return their paths. A run
    with gates also gets the comparison with random rank dropout at its sparsity, against
    the matched random-dropout runs ``controls`` when given."""
    from bslora_pyro.experiment import rundir
    from bslora_pyro.experiment.report import ANALYSIS_SECTIONS, write_report
    from bslora_pyro.experiment.setup import load_trained_method, read_run_config
    from bslora_pyro.persistence import atomic_write_text

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    method = load_trained_method(run_dir, config)
    train_log = rundir.read_jsonl(run_dir / rundir.TRAIN_LOG)
    history = rundir.read_jsonl(run_dir / rundir.GATE_LOG)
    written: list[Path] = []
    if isinstance(getattr(method, "prior", None), GatePrior):
        idata = build_inference_data(
            method, num_draws, config.seed if seed is None else seed, train_log, history,
            attrs={"run": config.name, "method": config.method},
        )
        written.append(save_inference_data(idata, run_dir / POSTERIOR_FILE))
        written += summary.write_gate_tables(idata, run_dir)
        figures = {
            "q(z=1) per layer and rank": plots.plot_gate_heatmap(idata),
            "expected active ranks over training": plots.plot_active_ranks(train_log, history),
        }
        saved = {alt: _save(fig, run_dir / GATE_FIGURES[alt], written)
                 for alt, fig in figures.items()}
        sections = [summary.gate_section(idata, saved)]
        if (run_dir / rundir.GATE_POSTERIOR).is_file():
            sections.append(dropout_section(run_dir, controls))
    else:
        for name in GATE_FILES:
            (run_dir / name).unlink(missing_ok=True)
        sections = [summary.no_gates_section(config.method)]
    sets = plots.load_prediction_sets(run_dir, [s.label for s in config.data.eval])
    figures = {
        "risk-coverage": plots.plot_risk_coverage(sets),
        "entropy and mutual information": plots.plot_uncertainty(sets),
        "training curves": plots.plot_training(train_log),
    }
    saved = {alt: _save(fig, run_dir / PREDICTIVE_FIGURES[alt], written)
             for alt, fig in figures.items()}
    if sets:
        sections.append(summary.predictive_section(sets, saved))
    atomic_write_text(run_dir / ANALYSIS_SECTIONS, "\n".join(sections))
    written.append(run_dir / ANALYSIS_SECTIONS)
    written.append(write_report(run_dir))
    return written


__all__ = ["POSTERIOR_FILE", "analyze_run", "build_inference_data", "load_inference_data"]
