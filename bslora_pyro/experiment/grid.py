"""Several methods x seeds on one config, in one process, then a comparison table."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.compare import compare_tables
from bslora_pyro.experiment.config import ExperimentConfig, build_dataclass
from bslora_pyro.experiment.runner import run_experiment
from bslora_pyro.experiment.setup import (
    build_scorer_and_backbone,
    load_eval_data,
    load_training_data,
)
from bslora_pyro.inference.checkpoint import CHECKPOINT_DIR, latest_checkpoint

#: per-method settings that differ from the shared config (the same data, seeds, steps)
METHOD_DEFAULTS: dict[str, dict] = {
    "map": {"train": {"weight_decay": 1e-5}},
}


def method_config(config: ExperimentConfig, method: str, seed: int) -> ExperimentConfig:
    """The shared config with ``method`` and ``seed`` set; other methods' options dropped."""
    data = copy.deepcopy(config.to_dict())
    data["method"], data["seed"] = method, seed
    data["train"]["seed"] = seed
    if method != config.method:
        data["method_options"] = {}
    for section, values in METHOD_DEFAULTS.get(method, {}).items():
        data[section].update(values)
    return build_dataclass(ExperimentConfig, data)


def variant_config(
    config: ExperimentConfig, name: str, method: str, overrides: list[str], seed: int
) -> ExperimentConfig:
    """``method_config`` plus ``--set``-style overrides; a variant named other than its
    method is renamed ``name`` (its label in comparison tables)."""
    from bslora_pyro.experiment.config import apply_overrides

    data = method_config(config, method, seed).to_dict()
    if name != method:
        data["name"] = name
    return build_dataclass(ExperimentConfig, apply_overrides(data, list(overrides)))


def select_variants(variants: list[dict], only: str | None) -> list[dict]:
    """The ``variants`` named in the comma-separated ``only`` (all when ``None``), in file
    order; an unknown name is an error that lists the known ones."""
    if not only:
        return variants
    names = only.split(",")
    unknown = sorted(set(names) - {v["name"] for v in variants})
    if unknown:
        raise SystemExit(f"--only: unknown variant(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(v['name'] for v in variants)}")
    return [v for v in variants if v["name"] in names]


def run_variants(
    config: ExperimentConfig,
    out_dir: str | Path,
    variants: list[dict],
    seeds: list[int],
    progress: bool = True,
    rerun: bool = False,
) -> tuple[str, str]:
    """Run named variants ``{"name", "method", "set": [...]}`` x seeds into
    ``out_dir/<name>/seed<k>``, and compare them. ``{out}`` in a ``set`` entry is
    ``out_dir`` (and ``{seed}`` in a string method option is the run's seed). Runs share a scorer (and its cache of
    frozen-prefix states) where their backbone and scoring settings agree; a variant that
    changes ``model.*`` gets a scorer of its own.

    A run that already finished with the same config (its ``metrics.json`` written) is
    kept, and one that was stopped after a checkpoint resumes from it, so a grid stopped
    half-way continues where it stopped; ``rerun`` redoes every run from the start.
    """
    out_dir = Path(out_dir)
    scorers: dict[str, object] = {}
    runs = []
    # every run's config (a seed, a method's options, a variant's --set) is checked first
    plan = [(variant, seed, variant_config(config, variant["name"], variant["method"],
                                           _overrides(variant, out_dir), seed))
            for variant in variants for seed in seeds]
    for variant, seed, cfg in plan:
        run_dir = out_dir / variant["name"] / f"seed{seed}"
        runs.append(run_dir)
        same = not rerun and _same_config(run_dir, cfg)
        if same and (run_dir / rundir.METRICS).exists():  # only a finished run has it
            print(f"== {variant['name']}, seed {seed}: finished in {run_dir}, kept", flush=True)
            continue
        # a run started afresh deletes older checkpoints, so this one is of ``cfg``
        resume = same and latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None
        print(f"== {variant['name']}, seed {seed} -> {run_dir}"
              + (" (resuming from its checkpoint)" if resume else ""), flush=True)
        key = scorer_key(cfg)
        if key not in scorers:  # one per backbone and scoring setting, shared by runs
            load_training_data(cfg)  # the data files are checked before a backbone loads
            load_eval_data(cfg)
            _, scorers[key] = build_scorer_and_backbone(cfg)
        run_experiment(cfg, run_dir, progress, scorer=scorers[key], resume=resume)
    return _write_comparison(out_dir, runs)


def _overrides(variant: dict, out_dir: Path) -> list[str]:
    """A variant's ``set`` list with ``{out}`` replaced by the grid's output folder (e.g. a
    matched control's ``match_run: {out}/bslora/seed{seed}``)."""
    return [text.replace("{out}", str(out_dir)) for text in variant.get("set", [])]


def scorer_key(config: ExperimentConfig) -> str:
    """What a scorer is built from: the model section (backbone, scoring mode, length,
    dtype, ...) and the adapted blocks (where the frozen prefix may end). Runs with the
    same key share a scorer and its cache of frozen-prefix states."""
    return yaml.safe_dump({"model": dataclasses.asdict(config.model),
                           "layers": config.adapter.layers}, sort_keys=True)


def _same_config(run_dir: Path, config: ExperimentConfig) -> bool:
    """Whether ``run_dir`` was started with exactly ``config``."""
    if not (run_dir / rundir.CONFIG).exists():
        return False
    saved = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    return saved == yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _write_comparison(out_dir: Path, runs: list[Path]) -> tuple[str, str]:
    markdown, csv_text = compare_tables(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(markdown + "\n")
    (out_dir / "comparison.csv").write_text(csv_text)
    return markdown, csv_text


def run_grid(
    config: ExperimentConfig,
    out_dir: str | Path,
    methods: list[str],
    seeds: list[int],
    progress: bool = True,
    rerun: bool = False,
) -> tuple[str, str]:
    """Run every (method, seed) into ``out_dir/<method>/seed<k>`` and compare them.

    All runs share one scorer, so frozen lower-block hidden states are computed once.
    Returns the comparison table as (markdown, csv), also written to ``out_dir``.
    """
    variants = [{"name": method, "method": method} for method in methods]
    return run_variants(config, out_dir, variants, seeds, progress, rerun)
