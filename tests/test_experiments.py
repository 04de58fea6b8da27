"""End to end on a tiny model: bslora grid / train / evaluate / compare and the run directory."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from tiny_run import CONFIG, save_tiny_model, write_arc

from bslora_pyro import metrics as M
from bslora_pyro.cli import main
from bslora_pyro.experiment import rundir
from bslora_pyro.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    model = save_tiny_model(tmp / "model")
    data = write_arc(tmp / "data", n=16)
    out = tmp / "runs"
    code = main(["grid", str(CONFIG), "--out", str(out), "--methods", "zero_shot,mle,bslora",
                 "--seeds", "0,1", "--quiet", "--data-dir", str(data),
                 "--set", f"model.name={model}"])
    assert code == 0
    return out, model, data


def test_run_directory_holds_what_the_issue_lists(grid_dir):
    out, _, _ = grid_dir
    run = out / "bslora" / "seed0"
    for name in ("config.yaml", "metrics.json", "train_log.jsonl", "gate_history.jsonl",
                 "reliability.png", "report.md"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    first, shift = metrics["arc_easy:dev"], metrics["arc_challenge:dev"]
    for key in ("acc", "ece", "nll", "brier", "n", "num_samples", "aurc"):
        assert key in first
    assert "ood_auroc_entropy" in shift and "ood_auroc_mi" in shift
    assert first["num_samples"] == 3
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert "reliability.png" in (run / "report.md").read_text()


def test_predictions_file_reproduces_the_metrics(grid_dir):
    out, _, _ = grid_dir
    run = out / "bslora" / "seed1"
    metrics = json.loads((run / "metrics.json").read_text())["arc_easy:dev"]
    preds = rundir.read_predictions(run / "predictions" / "arc_easy__dev.jsonl")
    assert preds.sample_probs.shape[0] == 3
    recomputed = M.summarize(preds.probs.numpy(), preds.labels.numpy())
    for key in ("acc", "ece", "nll", "brier"):
        # abs 1e-4 on metrics of order 1: predictions are stored to 8 significant digits
        assert recomputed[key] == pytest.approx(metrics[key], abs=1e-4)


def test_same_seed_same_data_order_and_different_seeds_differ(grid_dir):
    out, _, _ = grid_dir
    a = (out / "mle" / "seed0" / "predictions" / "arc_easy__dev.jsonl").read_text()
    b = (out / "mle" / "seed1" / "predictions" / "arc_easy__dev.jsonl").read_text()
    assert a != b


def test_compare_table_pools_seeds(grid_dir, capsys, tmp_path):
    out, _, _ = grid_dir
    table = (out / "comparison.md").read_text()
    assert "tiny/bslora" in table and "±" in table and "**" in table
    header = table.splitlines()[0]
    assert header.index("arc_easy:dev acc") < header.index("arc_challenge:dev acc")  # config
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert rows == ["| tiny/zero_shot", "| tiny/mle", "| tiny/bslora"]  # the grid's order
    runs = [str(p) for p in sorted(out.glob("*/seed*"))]
    assert main(["compare", *runs, "--out", str(tmp_path)]) == 0
    # 2 sets x 4 metrics, and the shift set's OOD AUROCs: by entropy and, for a predictive
    # of several draws, by mutual information (a point estimate's MI is 0 everywhere)
    csv_text = (tmp_path / "comparison.csv").read_text()
    assert csv_text.count("tiny/mle") == 9 and csv_text.count("tiny/bslora") == 10
    assert "tiny/mle,arc_challenge:dev,ood_auroc_mi" not in csv_text


def test_grid_keeps_finished_runs_and_redoes_unfinished_ones(grid_dir, capsys, tmp_path):
    out, model, data = grid_dir
    grid_out = tmp_path / "runs"
    args = ["grid", str(CONFIG), "--out", str(grid_out), "--methods", "mle", "--seeds", "0,1",
            "--quiet", "--data-dir", str(data), "--set", f"model.name={model}"]
    assert main(args) == 0
    kept = grid_out / "mle" / "seed0" / "metrics.json"
    stamp = kept.stat().st_mtime_ns
    seed1 = grid_out / "mle" / "seed1"
    predictions = (seed1 / "predictions" / "arc_easy__dev.jsonl").read_text()
    (seed1 / "metrics.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mle, seed 0: finished" in printed
    assert "mle, seed 1 -> " in printed and "(resuming from its checkpoint)" in printed
    assert kept.stat().st_mtime_ns == stamp
    assert (seed1 / "metrics.json").is_file()
    assert (seed1 / "predictions" / "arc_easy__dev.jsonl").read_text() == predictions
    assert main([*args[:-2], "--set", "train.steps=2", "--set", f"model.name={model}"]) == 0
    printed = capsys.readouterr().out
    assert ": finished in" not in printed and "resuming" not in printed  # another config
    assert kept.stat().st_mtime_ns != stamp


def test_evaluate_adds_a_shift_set(grid_dir, capsys):
    out, _, data = grid_dir
    run = out / "bslora" / "seed0"
    before = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--task", "arc_challenge", "--split", "dev",
                 "--limit", "5", "--data-dir", str(data), "--quiet", "--num-samples", "2"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["arc_challenge:dev"]["n"] == 5 and after["arc_challenge:dev"]["num_samples"] == 2
    assert after["arc_easy:dev"] == before["arc_easy:dev"]
    assert "ood_auroc_mi" in after["arc_challenge:dev"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments" / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "experiments" / "configs" / f"{name}.yaml")
    assert config.data.eval


def test_paper_grid_builds_every_task_config():
    sys.path.insert(0, str(ROOT / "experiments"))
    import paper_grid

    base = load_config(ROOT / "experiments" / "configs" / "paper_llama31_8b.yaml")
    for task in paper_grid.IN_DISTRIBUTION:
        config = paper_grid.task_config(base, task)
        assert config.data.train.task == task
    obqa = paper_grid.task_config(base, "openbookqa")
    assert [e.task for e in obqa.data.eval][1:] == [t for t, _ in paper_grid.SHIFT]


def test_paper_grid_runs_named_variants_and_writes_paper_tables(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import paper_grid

    model = save_tiny_model(tmp_path / "model")
    data = write_arc(tmp_path / "data", n=24)
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        "variants:\n"
        "  - {name: mle, method: mle}\n"
        "  - {name: gated_p03, method: bslora, set: [method_options.prior_kwargs.p0=0.3]}\n"
        "  - {name: ensemble, method: ensemble, tasks: [openbookqa]}\n"
    )
    paper_grid.main(paper_grid.parse_args([
        str(CONFIG), "--out", str(tmp_path / "runs"), "--variants", str(variants),
        "--tasks", "arc_easy", "--seeds", "0", "--train-limit", "20", "--eval-limit", "8",
        "--data-dir", str(data), "--quiet", "--set", f"model.name={model}",
        "--set", "data.validation_fraction=0.25", "--set", "predict.posthoc_temperature=true",
    ]))
    table = (tmp_path / "runs" / "paper_table.md").read_text()
    acc = table.split("### ACC")[1].split("###")[0].strip().splitlines()
    rows = [line.split(" | ")[0] for line in acc[2:]]
    assert rows == ["| mle", "| mle + T", "| gated_p03", "| gated_p03 + T"]
    assert "| method | ARC-E |" in table and "### ECE" in table and "### MI" in table
    validation = table.split("### Validation NLL (selection)")[1].split("###")[0]
    validation = validation.strip().splitlines()
    assert [line.split(" | ")[0] for line in validation[2:]] == ["| mle", "| gated_p03"]
    nll = rundir.read_metrics(tmp_path / "runs" / "arc_easy" / "mle" / "seed0")["_validation"]["nll"]
    assert validation[2] == f"| mle | {nll:.3f} |"
    assert not (tmp_path / "runs" / "arc_easy" / "ensemble").exists()  # limited to OBQA
    run = tmp_path / "runs" / "arc_easy" / "gated_p03" / "seed0"
    assert rundir.read_metrics(run)["_run"]["train_examples"] == 15  # 20 less 5 validation
    timing = table.split("### Run time (minutes per run)")[1].strip().splitlines()
    timings = [rundir.read_metrics(run.parent.parent / name / "seed0")["_run"]
               for name in ("mle", "gated_p03")]
    assert all(t["run_seconds"] >= t["train_seconds"] for t in timings)  # training is a part
    seconds = [t["run_seconds"] for t in timings]
    assert timing[2] == f"| mle | {seconds[0] / 60:.1f} |"
    assert timing[-1] == f"2 timed runs, {sum(seconds) / 3600:.2f} h summed over the runs (the wall time if they ran one after another)."

    # --table-only trains nothing: seed 1 never ran, so its cells say they hold one seed
    paper_grid.main(paper_grid.parse_args([
        str(CONFIG), "--out", str(tmp_path / "runs"), "--variants", str(variants),
        "--tasks", "arc_easy", "--seeds", "0,1", "--table-only", "--quiet",
    ]))
    assert not (tmp_path / "runs" / "arc_easy" / "mle" / "seed1").exists()
    partial = (tmp_path / "runs" / "paper_table.md").read_text()
    assert "(n = 1)" in partial and partial.replace(" (n = 1)", "") == table


def test_paper_grid_only_names_known_variants(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import paper_grid

    variants = tmp_path / "variants.yaml"
    variants.write_text("variants:\n  - {name: mle, method: mle}\n")
    with pytest.raises(SystemExit, match="unknown variant.*bslora_typo.*choose from mle"):
        paper_grid.main(paper_grid.parse_args([
            str(CONFIG), "--out", str(tmp_path / "runs"), "--variants", str(variants),
            "--only", "mle,bslora_typo",
        ]))
    assert not (tmp_path / "runs").exists()


def test_help_on_every_command(capsys):
    for command in ("train", "evaluate", "compare", "grid", "analyze"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: bslora" in capsys.readouterr().out


def test_a_variant_that_changes_the_scoring_gets_a_scorer_of_its_own(tmp_path, monkeypatch):
    """A variant's model.scoring (or model.name, model.max_length) must not be served by the
    scorer built for the base config."""
    from bslora_pyro.experiment import grid

    built, used = [], []

    class Scorer:
        def __init__(self, mode: str, max_length: int) -> None:
            self.mode, self.max_length = mode, max_length

    def build(cfg):
        built.append(cfg.model.scoring)
        return None, Scorer(cfg.model.scoring, cfg.model.max_length)

    def run(cfg, run_dir, progress, scorer=None, resume=False):
        used.append((cfg.name, cfg.model.scoring, scorer.mode, cfg.model.max_length,
                     scorer.max_length))

    monkeypatch.setattr(grid, "build_scorer_and_backbone", build)
    monkeypatch.setattr(grid, "run_experiment", run)
    monkeypatch.setattr(grid, "_write_comparison", lambda out, runs: ("", ""))
    config = load_config(CONFIG)
    variants = [
        {"name": "plain", "method": "mle"},
        {"name": "mean", "method": "mle", "set": ["model.scoring=choice_loglik_mean"]},
        {"name": "short", "method": "mle", "set": ["model.max_length=48"]},
        {"name": "plain_again", "method": "bslora"},
    ]
    grid.run_variants(config, tmp_path, variants, seeds=[0, 1], progress=False)
    assert all(scoring == mode and length == scorer_length
               for _, scoring, mode, length, scorer_length in used)
    assert len(used) == 8 and len(built) == 3  # plain and plain_again share one


def test_benchmark_table_pools_seeds_and_pairs_variants(grid_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import benchmark_table

    out, _, _ = grid_dir
    text_file = tmp_path / "tables.md"
    benchmark_table.main(benchmark_table.parse_args(
        [str(out), "--pairs", "bslora:mle", "--out", str(text_file)]))
    text = text_file.read_text()
    assert "## In distribution: arc_easy:dev" in text
    assert "## Out of distribution: arc_challenge:dev" in text
    rows = {line.split(" | ")[0].lstrip("| ") for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert {"zero_shot", "mle", "bslora"} <= rows
    values = benchmark_table.collect(out)
    mle_acc = [s["ACC"] for s in values["mle"]]
    assert len(mle_acc) == 2 and benchmark_table.cell(mle_acc).count("±") == 1
    pair = next(line for line in text.splitlines() if line.startswith("| bslora | mle"))
    assert pair.split(" | ")[2] == "2"  # two seeds paired
    # a point estimate has no MI to rank by: its MI columns stay empty, the gates' do not
    ood = text.split("## Out of distribution: arc_challenge:dev")[1]
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
             for line in ood.splitlines() if line.startswith("| ") and "---" not in line}
    assert cells["mle"][1] == "" and cells["mle"][2] != ""
    assert cells["bslora"][1] != ""
    # a run made before set_metrics left them out still holds a one-draw MI score: blanked
    old = tmp_path / "old" / "mle" / "seed0"
    shutil.copytree(out / "mle" / "seed0", old)
    metrics = json.loads((old / "metrics.json").read_text())
    metrics["arc_challenge:dev"].update(ood_auroc_mi=0.5, ood_fpr95_mi=1.0)
    (old / "metrics.json").write_text(json.dumps(metrics))
    kept = benchmark_table.run_values(old)
    assert math.isnan(kept["arc_challenge:dev AUROC MI"])
    assert math.isnan(kept["arc_challenge:dev FPR95 MI"])
    assert kept["arc_challenge:dev AUROC entropy"] == metrics["arc_challenge:dev"]["ood_auroc_entropy"]


def test_reliability_figure_overlays_runs_and_names_a_missing_set(grid_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import reliability_figure

    out, _, _ = grid_dir
    runs = [str(out / name / "seed0") for name in ("mle", "bslora")]
    figure = tmp_path / "reliability.png"
    reliability_figure.main(reliability_figure.parse_args(
        [*runs, "--set", "arc_easy:dev", "--out", str(figure), "--min-count", "1"]))
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no predictions for arc_easy:test"):
        reliability_figure.main(reliability_figure.parse_args(
            [*runs, "--set", "arc_easy:test", "--out", str(figure)]))


def test_laplace_reorder_counts_where_the_predictive_and_its_mean_network_disagree(tmp_path,
                                                                                    capsys):
    sys.path.insert(0, str(ROOT / "experiments"))
    import laplace_reorder

    wide, narrow = [[900.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]
    rows = [  # mean picks 1 everywhere; the wide first logit pulls the predictive to 0 once
        {"label": 1, "probs": [0.6, 0.4], "logit_mean": [0.0, 1.0], "logit_cov": wide},
        {"label": 1, "probs": [0.2, 0.8], "logit_mean": [0.0, 2.0], "logit_cov": narrow},
        {"label": 0, "probs": [0.3, 0.7], "logit_mean": [0.0, 3.0], "logit_cov": narrow},
        {"label": 1, "probs": [0.1, 0.9], "logit_mean": [0.0, 4.0], "logit_cov": narrow},
    ]
    run = tmp_path / "laplace" / "seed0"
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "task__dev.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (run / "predictions" / "ood__test.jsonl").write_text(json.dumps(
        {**rows[0], "label": None}) + "\n")
    (run / "metrics.json").write_text(json.dumps({"task:dev": {"acc": 0.5}, "ood:test": {}}))
    stats = laplace_reorder.reorder_stats(run / "predictions" / "task__dev.jsonl")
    assert stats["mean_network_acc"] == 0.75 and stats["predictive_acc"] == 0.5
    assert stats["disagree"] == 0.25
    assert stats["logit_sd"] == pytest.approx((15.5 + 1 + 1 + 1) / 4)
    assert laplace_reorder.reorder_stats(run / "predictions" / "ood__test.jsonl") is None
    mle = tmp_path / "mle" / "seed0"
    mle.mkdir(parents=True)
    (mle / "metrics.json").write_text(json.dumps({"task:dev": {"acc": 0.7}}))
    assert laplace_reorder.main([str(run), "--mle", str(tmp_path / "mle")]) == 0
    table = capsys.readouterr().out
    assert "| task:dev | 0.700 | 0.750 | 0.500 | 0.250 |" in table and "ood" not in table


def test_compare_leaves_out_a_single_draws_mi_scores_kept_by_older_runs(tmp_path):
    from bslora_pyro.experiment.compare import compare_tables

    shift = {"n": 5, "ood_auroc_entropy": 0.6, "ood_auroc_mi": 0.5, "mean_mutual_information": 0.0}
    runs = []
    for method, draws in (("mle", 1), ("bslora", 4)):
        run = tmp_path / method / "seed0"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"name: old\nmethod: {method}\n")
        (run / "metrics.json").write_text(json.dumps({
            "task:dev": {"n": 5, "acc": 0.8, "num_samples": draws},
            "ood:test": {**shift, "num_samples": draws}}))
        runs.append(run)
    _, csv_text = compare_tables(runs)
    assert "old/bslora,ood:test,ood_auroc_mi" in csv_text
    assert "old/mle,ood:test,ood_auroc_entropy" in csv_text
    assert "old/mle,ood:test,ood_auroc_mi" not in csv_text
