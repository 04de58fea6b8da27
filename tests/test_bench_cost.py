"""The sentiment-prediction section of the cost benchmark, on the tiny model (its numbers are
not measurements): both passes warm, every measure and ratio present, a clean fallback."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bslora_pyro.scoring.prefix import FrozenPrefix

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = {"predict_sent_mle", "predict_sent_bayes", "predict_sent_shared",
             "predict_sent_floor"}


@pytest.fixture(scope="module")
def bench_cost():
    """The script as a module (the name ``gpu_cost.py`` imports it by)."""
    if "bench_cost" in sys.modules:
        return sys.modules["bench_cost"]
    spec = importlib.util.spec_from_file_location("bench_cost", ROOT / "benchmarks" / "bench_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cost"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def smoke_args(bench_cost, tmp_path, *extra: str):
    return bench_cost.parse_args([
        "--models", "tiny", "--sections", "sentiment", "--reviews", "6",
        "--sentiment-batch-size", "4", "--draws", "3", "--steps", "2", "--warmup", "1",
        "--sentiment-top", "2,3", "--out", str(tmp_path / "bench.json"), *extra,
    ])


def test_sentiment_section_times_warm_passes_and_reports_the_floor(
    bench_cost, tmp_path, monkeypatch
):
    computed = []
    original = FrozenPrefix.lower

    def counting_lower(self, rows, context=None):
        computed.append(rows.num_rows)
        return original(self, rows, context)

    monkeypatch.setattr(FrozenPrefix, "lower", counting_lower)
    monkeypatch.setattr(bench_cost, "sentiment_examples", lambda count, seed: (
        [bench_cost.review_example(f"r{i}", text, i % 2)
         for i, text in enumerate(bench_cost.synthetic_reviews(count, seed))], "synthetic"))
    report = bench_cost.main(smoke_args(bench_cost, tmp_path, "--cold"))
    settings = report["results"]["tiny"]
    assert set(settings) == {"sent2", "sent3"}
    for values in settings.values():
        assert SENTIMENT | {f"{k}_cpu" for k in SENTIMENT} <= set(values)
        assert {"predict_sent_mle_cold", "predict_sent_bayes_cold"} <= set(values)
        assert all(len(values[k]) == 2 for k in SENTIMENT)  # one per timed round
        assert values["cached_rows"] == {"mle": 12, "bayes": 12} and values["rows"] == 12
        for shared, mle, floor in zip(values["predict_sent_shared"], values["predict_sent_mle"],
                                      values["predict_sent_floor"], strict=True):
            assert floor == pytest.approx(shared + 3 * (mle - shared))
    # per setting the warm passes ran the prefix only in the warm-up round, once per batch (2)
    # and method (2); the cold passes in every round (3) too
    assert len(computed) == 2 * (2 * 2 + 3 * 2 * 2)
    labels = {(row["layers"], row["metric"]) for row in report["ratios"]}
    for blocks in ("sent2/8", "sent3/8"):
        for metric in ("M=3 sentiment / cached MLE pass", "floor / cached MLE pass",
                       "M=3 sentiment / its floor", "M=3 sentiment / cached MLE, CPU time",
                       "M=3 sentiment cold / cold MLE pass"):
            assert (blocks, metric) in labels
    assert all(row["met"] is None for row in report["ratios"])  # stated for 30 blocks only
    assert json.loads((tmp_path / "bench.json").read_text())["ratios"] == report["ratios"]


def test_reviews_come_from_the_task_when_it_loads_else_synthetic(bench_cost, monkeypatch):
    import bslora_pyro.data as data

    def missing(name, split, limit=None):
        raise data.DataError(f"unknown task {name!r}")

    monkeypatch.setattr(data, "load_task", missing)
    examples, source = bench_cost.sentiment_examples(5, 0)
    assert source == "synthetic" and len(examples) == 5
    assert len({ex.uid for ex in examples}) == 5
    assert examples[0].loglik_pairs[1] == (
        f"Movie review: {examples[0].question}\nSentiment:", " positive"
    )
    assert all(12 <= len(ex.question.split()) <= 40 for ex in examples)
    loaded = [bench_cost.review_example(f"t{i}", "Fine.", 1) for i in range(5)]
    monkeypatch.setattr(data, "load_task", lambda name, split, limit=None: loaded[:limit])
    assert bench_cost.sentiment_examples(5, 0) == (loaded, "movie_reviews test")
    assert bench_cost.sentiment_examples(6, 0)[1] == "synthetic"  # too few test reviews


def test_bad_sentiment_options_are_refused(bench_cost, capsys):
    for argv in (["--sections", "speed"], ["--sentiment-top", "x"], ["--reviews", "0"],
                 ["--warmup", "0"]):
        with pytest.raises(SystemExit):
            bench_cost.parse_args(argv)
    assert "--warmup" in capsys.readouterr().err
