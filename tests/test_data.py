"""Task loaders and prompts: the shared local data, the hub path (faked) and error reporting."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from bslora_pyro.data import (
    TASK_SPLITS,
    DataError,
    MultipleChoiceExample,
    available_tasks,
    load_task,
)
from bslora_pyro.data.prompts import (
    boolq_letter_prompt,
    boolq_loglik_pairs,
    letter_prompt,
    loglik_pairs,
    winogrande_loglik_pairs,
)

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"shared benchmark data not found at {DATA_DIR}"
)

MC_HEAD = "Select one of the choices that answers the following question:"


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BSLORA_DATA_DIR", raising=False)


# --------------------------------------------------------------------------- prompts


def test_letter_prompt_four_choices() -> None:
    prompt = letter_prompt("Q?", ["w", "x", "y", "z"])
    assert prompt == f"{MC_HEAD} Q? Choices: A. w. B. x. C. y. D. z. Answer:"


def test_letter_prompt_two_and_five_choices() -> None:
    assert letter_prompt("S _ t.", ("a", "b")) == f"{MC_HEAD} S _ t. Choices: A. a. B. b. Answer:"
    five = letter_prompt("Q", list("vwxyz"))
    assert five.endswith("D. y. E. z. Answer:")


def test_letter_prompt_rejects_one_choice() -> None:
    with pytest.raises(ValueError):
        letter_prompt("Q", ["only"])


def test_boolq_prompts() -> None:
    assert boolq_letter_prompt("is it", "Some passage") == (
        "Answer the question with only True or False: is it Context: Some passage."
    )
    context = "P.\nQuestion: is it?\nAnswer:"
    assert boolq_loglik_pairs("is it", "P.") == ((context, " yes"), (context, " no"))


def test_loglik_pairs_question_answer() -> None:
    assert loglik_pairs("Why?", ["a", "b c"]) == (
        ("Question: Why?\nAnswer:", " a"),
        ("Question: Why?\nAnswer:", " b c"),
    )


def test_winogrande_partial_scoring() -> None:
    pairs = winogrande_loglik_pairs("Tom hid from Ann because _ was scared.", ("Tom", "Ann"))
    assert pairs == (
        ("Tom hid from Ann because Tom", " was scared."),
        ("Tom hid from Ann because Ann", " was scared."),
    )
    with pytest.raises(ValueError):
        winogrande_loglik_pairs("no blank here", ("a", "b"))


# --------------------------------------------------------------------------- registry


def test_registry_lists_tasks_and_splits() -> None:
    tasks = available_tasks()
    for name in ("arc_challenge", "arc_easy", "openbookqa", "winogrande_s", "winogrande_m"):
        assert name in tasks
    assert "boolq" in tasks and "mmlu:college_physics" in tasks
    assert len([t for t in tasks if t.startswith("mmlu:")]) == 57
    assert TASK_SPLITS["arc_challenge"] == ("train", "dev", "test")
    assert TASK_SPLITS["boolq"] == ("train", "validation")
    assert TASK_SPLITS["mmlu:<subject>"] == ("dev", "val", "test")


def test_unknown_task_lists_known(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_task("arc_medium", "dev", tmp_path)
    message = str(info.value)
    assert "arc_medium" in message and "arc_challenge" in message and "mmlu:<subject>" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="unknown task"):
        load_task("mmlu:not_a_subject", "test", tmp_path)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no split 'test'.*train, dev"):
        load_task("winogrande_s", "test", tmp_path)


# --------------------------------------------------------------------------- shared local data

LOCAL_COUNTS = [
    ("arc_challenge", "train", 1119),
    ("arc_challenge", "dev", 299),
    ("arc_challenge", "test", 1172),
    ("arc_easy", "train", 2251),
    ("arc_easy", "dev", 570),
    ("arc_easy", "test", 2376),
    ("openbookqa", "train", 4957),
    ("openbookqa", "test", 500),
    ("winogrande_s", "train", 640),
    ("winogrande_s", "dev", 1267),
    ("winogrande_m", "train", 2558),
    ("winogrande_m", "dev", 1267),
    ("mmlu:college_chemistry", "dev", 5),
    ("mmlu:college_chemistry", "val", 8),
    ("mmlu:college_chemistry", "test", 100),
    ("mmlu:college_physics", "dev", 5),
    ("mmlu:college_physics", "val", 11),
    ("mmlu:college_physics", "test", 102),
    ("mmlu:abstract_algebra", "dev", 5),
]


@needs_data
@pytest.mark.parametrize(("task", "split", "count"), LOCAL_COUNTS)
def test_local_split_counts(task: str, split: str, count: int) -> None:
    examples = load_task(task, split, DATA_DIR)
    assert len(examples) == count
    for ex in examples:
        assert isinstance(ex, MultipleChoiceExample)
        assert 0 <= ex.label < ex.num_choices
        assert len(ex.loglik_pairs) == ex.num_choices
        assert ex.letter_prompt.startswith(MC_HEAD) and ex.letter_prompt.endswith(" Answer:")
    assert len({ex.uid for ex in examples}) == count


@needs_data
def test_all_mmlu_dev_subjects_load() -> None:
    total = sum(
        len(load_task(t, "dev", DATA_DIR)) for t in available_tasks() if t.startswith("mmlu:")
    )
    assert total == 285


@needs_data
def test_env_var_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSLORA_DATA_DIR", str(DATA_DIR))
    assert len(load_task("arc_easy", "validation")) == 570
    assert len(load_task("mmlu:college_physics", "validation")) == 11


@needs_data
def test_limit_takes_first_rows() -> None:
    full = load_task("arc_easy", "train", DATA_DIR)
    assert load_task("arc_easy", "train", DATA_DIR, limit=7) == full[:7]
    assert (
        load_task("mmlu:college_physics", "test", DATA_DIR, limit=3)
        == load_task("mmlu:college_physics", "test", DATA_DIR)[:3]
    )
    assert load_task("winogrande_s", "dev", DATA_DIR, limit=0) == []


@needs_data
def test_arc_first_dev_row_prompt() -> None:
    ex = load_task("arc_challenge", "dev", DATA_DIR, limit=1)[0]
    question = (
        "Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls "
        "the farthest. What should they do so they can repeat their investigation?"
    )
    assert ex.uid == "Mercury_SC_407695"
    assert ex.label == 3  # answerKey D
    assert ex.letter_prompt == (
        f"{MC_HEAD} {question} Choices: A. Put the objects in groups.. "
        "B. Change the height of the ramp.. C. Choose different objects to roll.. "
        "D. Record the details of the investigation.. Answer:"
    )
    assert ex.loglik_pairs[3] == (
        f"Question: {question}\nAnswer:",
        " Record the details of the investigation.",
    )


@needs_data
def test_arc_numeric_answer_keys() -> None:
    by_uid = {ex.uid: ex for ex in load_task("arc_challenge", "dev", DATA_DIR)}
    seed = by_uid["NYSEDREGENTS_2014_8_38"]  # labels 1-4, answerKey "1"
    assert seed.label == 0
    assert seed.choices[0] == "a definite shape and a definite volume"
    assert "A. a definite shape and a definite volume. B." in seed.letter_prompt
    assert by_uid["NYSEDREGENTS_2014_8_41"].label == 3  # answerKey "4"
    assert by_uid["NYSEDREGENTS_2014_8_20"].label == 1  # answerKey "2"


@needs_data
def test_arc_three_and_five_choice_questions() -> None:
    examples = load_task("arc_challenge", "dev", DATA_DIR)
    assert Counter(ex.num_choices for ex in examples) == {4: 295, 3: 3, 5: 1}
    by_uid = {ex.uid: ex for ex in examples}
    three = by_uid["NYSEDREGENTS_2014_4_4"]
    assert three.choices == ("gas", "liquid", "solid") and three.label == 0
    assert three.letter_prompt.endswith("Choices: A. gas. B. liquid. C. solid. Answer:")
    five = by_uid["TIMSS_2003_8_pg29"]
    assert five.choices == ("liver", "kidney", "stomach", "bladder", "heart")
    assert five.label == 4  # answerKey E
    assert five.letter_prompt.endswith("D. bladder. E. heart. Answer:")
    easy = Counter(ex.num_choices for ex in load_task("arc_easy", "dev", DATA_DIR))
    assert easy == {4: 567, 5: 2, 3: 1}


@needs_data
def test_openbookqa_first_test_row() -> None:
    ex = load_task("openbookqa", "test", DATA_DIR, limit=1)[0]
    assert ex.uid == "8-343" and ex.label == 1
    assert ex.letter_prompt == (
        f"{MC_HEAD} A person wants to start saving money so that they can afford a nice vacation "
        "at the end of the year. After looking over their budget and expenses, they decide the "
        "best way to save money is to Choices: A. make more phone calls. B. quit eating lunch "
        "out. C. buy less with monopoly money. D. have lunch with friends. Answer:"
    )


@needs_data
def test_openbookqa_dev_missing_is_clear() -> None:
    with pytest.raises(DataError) as info:
        load_task("openbookqa", "dev", DATA_DIR)
    message = str(info.value)
    assert str(DATA_DIR / "openbookqa" / "Main" / "dev.jsonl") in message
    assert "openbookqa/Main/test.jsonl" in message


@needs_data
def test_winogrande_first_dev_row() -> None:
    ex = load_task("winogrande_m", "dev", DATA_DIR, limit=1)[0]
    sentence = "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert ex.uid == "3FCO4VKOZ4BJQ6IFC0VAIBK4KTWE7U-2"
    assert ex.choices == ("Sarah", "Maria") and ex.label == 1
    assert ex.letter_prompt == f"{MC_HEAD} {sentence} Choices: A. Sarah. B. Maria. Answer:"
    assert ex.loglik_pairs == (
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    )


@needs_data
def test_winogrande_small_is_subset_of_medium() -> None:
    small = {ex.uid for ex in load_task("winogrande_s", "train", DATA_DIR)}
    medium = {ex.uid for ex in load_task("winogrande_m", "train", DATA_DIR)}
    assert small <= medium


@needs_data
def test_mmlu_first_physics_test_row() -> None:
    ex = load_task("mmlu:college_physics", "test", DATA_DIR, limit=1)[0]
    assert ex.label == 1  # B
    assert ex.letter_prompt == (
        f"{MC_HEAD} The quantum efficiency of a photon detector is 0.1. If 100 photons are sent "
        "into the detector, one after the other, the detector will detect photons Choices: "
        "A. an average of 10 times, with an rms deviation of about 4. "
        "B. an average of 10 times, with an rms deviation of about 3. "
        "C. an average of 10 times, with an rms deviation of about 1. "
        "D. an average of 10 times, with an rms deviation of about 0.1. Answer:"
    )


@needs_data
def test_boolq_missing_locally_names_path() -> None:
    with pytest.raises(DataError, match=r"missing file .*boolq.dev\.jsonl"):
        load_task("boolq", "validation", DATA_DIR)


# --------------------------------------------------------------------------- small local files


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _at(path: Path, rest: str) -> str:
    """Regex matching ``path`` literally followed by the regex ``rest``."""
    return re.escape(str(path)) + rest


def _arc_row(uid: str, key: str = "B", labels: str = "ABCD") -> str:
    choices = [{"text": f"choice {label}", "label": label} for label in labels]
    question = {"stem": f"stem {uid}", "choices": choices}
    return json.dumps({"id": uid, "question": question, "answerKey": key})


def _arc_file(root: Path, split: str = "Dev") -> Path:
    return root / "arc" / "ARC-Easy" / f"ARC-Easy-{split}.jsonl"


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write(_arc_file(tmp_path), [_arc_row("q1"), "", '{"id": "q2", "question": '])
    with pytest.raises(DataError) as info:
        load_task("arc_easy", "dev", tmp_path)
    assert f"{path}, line 3" in str(info.value) and "invalid JSON" in str(info.value)


def test_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = _write(_arc_file(tmp_path), [_arc_row("q1"), json.dumps({"id": "q2", "answerKey": "A"})])
    with pytest.raises(DataError, match=_at(path, ", line 2: missing field 'question'")):
        load_task("arc_easy", "dev", tmp_path)


def test_label_outside_choices(tmp_path: Path) -> None:
    path = _write(_arc_file(tmp_path), [_arc_row("q1"), _arc_row("q2", key="E")])
    with pytest.raises(DataError) as info:
        load_task("arc_easy", "dev", tmp_path)
    message = str(info.value)
    assert f"{path}, line 2" in message and "'E' is not among the choice labels" in message


def test_numeric_labels_map_by_position(tmp_path: Path) -> None:
    _write(_arc_file(tmp_path), [_arc_row("q1", key="3", labels="1234")])
    ex = load_task("arc_easy", "dev", tmp_path)[0]
    assert ex.label == 2
    assert ex.letter_prompt.endswith("A. choice 1. B. choice 2. C. choice 3. D. choice 4. Answer:")


def test_missing_file_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_task("arc_challenge", "test", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "arc" / "ARC-Challenge" / "ARC-Challenge-Test.jsonl") in message
    assert "arc/ARC-Challenge/ARC-Challenge-Train.jsonl" in message


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task("arc_easy", "dev", tmp_path / "nowhere")


def test_empty_file(tmp_path: Path) -> None:
    path = _write(_arc_file(tmp_path), ["", "   "])
    with pytest.raises(DataError, match=_at(path, " is empty")):
        load_task("arc_easy", "dev", tmp_path)
    csv_path = _write(tmp_path / "mmlu" / "test" / "virology_test.csv", [])
    with pytest.raises(DataError, match=_at(csv_path, " is empty")):
        load_task("mmlu:virology", "test", tmp_path)


def test_mmlu_wrong_column_count_and_answer(tmp_path: Path) -> None:
    path = tmp_path / "mmlu" / "val" / "anatomy_val.csv"
    _write(path, ['"multi\nline question",a,b,c,d,A', "q2,a,b,c,d", "q3,a,b,c,d,B"])
    with pytest.raises(DataError, match=_at(path, ", line 3: expected 6 columns")):
        load_task("mmlu:anatomy", "val", tmp_path)
    _write(path, ["q1,a,b,c,d,A", "q2,a,b,c,d,E"])
    with pytest.raises(DataError, match=_at(path, ", line 2: answer must be one of A, B, C, D")):
        load_task("mmlu:anatomy", "val", tmp_path)


def test_mmlu_quoted_fields(tmp_path: Path) -> None:
    _write(tmp_path / "mmlu" / "test" / "anatomy_test.csv", ['"Is 1,2 a pair?",yes,no,"x, y",z,C'])
    ex = load_task("mmlu:anatomy", "test", tmp_path)[0]
    assert ex.choices == ("yes", "no", "x, y", "z") and ex.label == 2


def _wino_row(uid: str, answer: str | None) -> str:
    row = {"qID": uid, "sentence": "A met B so _ smiled.", "option1": "A", "option2": "B"}
    if answer is not None:
        row["answer"] = answer
    return json.dumps(row)


def test_winogrande_labels_file(tmp_path: Path) -> None:
    wino = tmp_path / "winogrande"
    _write(wino / "train_s.jsonl", [_wino_row("a", None), _wino_row("b", None)])
    _write(wino / "train_s-labels.lst", ["2", "1"])
    assert [ex.label for ex in load_task("winogrande_s", "train", tmp_path)] == [1, 0]


def test_winogrande_labels_length_mismatch_names_both_files(tmp_path: Path) -> None:
    wino = tmp_path / "winogrande"
    data = _write(wino / "dev.jsonl", [_wino_row("a", "1"), _wino_row("b", "2")])
    labels = _write(wino / "dev-labels.lst", ["1"])
    with pytest.raises(DataError) as info:
        load_task("winogrande_m", "dev", tmp_path)
    assert str(data) in str(info.value) and str(labels) in str(info.value)


def test_winogrande_bad_answer(tmp_path: Path) -> None:
    path = _write(tmp_path / "winogrande" / "dev.jsonl", [_wino_row("a", "1"), _wino_row("b", "3")])
    with pytest.raises(DataError, match=_at(path, ", line 2: answer must be '1' or '2'")):
        load_task("winogrande_s", "dev", tmp_path)


def test_boolq_local(tmp_path: Path) -> None:
    row = {"question": "is water wet", "title": "t", "answer": False, "passage": "Water is wet"}
    _write(tmp_path / "boolq" / "dev.jsonl", [json.dumps(row)])
    ex = load_task("boolq", "dev", tmp_path)[0]
    assert ex.choices == ("True", "False") and ex.label == 1 and ex.context == "Water is wet"
    assert ex.letter_prompt == (
        "Answer the question with only True or False: is water wet Context: Water is wet."
    )
    assert ex.loglik_pairs[0] == ("Water is wet\nQuestion: is water wet?\nAnswer:", " yes")


def test_negative_limit(tmp_path: Path) -> None:
    _write(_arc_file(tmp_path), [_arc_row("q1")])
    with pytest.raises(DataError, match="limit"):
        load_task("arc_easy", "dev", tmp_path, limit=-1)


# --------------------------------------------------------------------------- hub path (faked)


class _FakeDataset(list):
    def select(self, indices: range) -> _FakeDataset:
        return _FakeDataset(self[i] for i in indices)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, rows: list[dict]) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None):
        calls.append((path, name, split))
        return _FakeDataset(rows)

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_arc_maps_dev_to_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    choices = {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}
    row = {"id": "x1", "question": "Q", "answerKey": "2", "choices": choices}
    calls = _fake_hub(monkeypatch, [row, row])
    examples = load_task("arc_challenge", "dev", limit=1)
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation")]
    assert len(examples) == 1 and examples[0].label == 1 and examples[0].num_choices == 3


def test_hub_other_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    choices = {"text": ["a", "b", "c", "d"], "label": list("ABCD")}
    obqa = {"id": "o", "question_stem": "Q", "answerKey": "A", "choices": choices}
    calls = _fake_hub(monkeypatch, [obqa])
    assert load_task("openbookqa", "test")[0].label == 0
    _fake_hub(monkeypatch, [{"sentence": "x _ y", "option1": "p", "option2": "q", "answer": "2"}])
    assert load_task("winogrande_s", "train")[0].loglik_pairs == (("x p", " y"), ("x q", " y"))
    _fake_hub(monkeypatch, [{"question": "q", "passage": "p", "answer": True}])
    assert load_task("boolq", "validation")[0].label == 0
    mmlu_row = {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 3}
    mmlu_calls = _fake_hub(monkeypatch, [mmlu_row])
    assert load_task("mmlu:virology", "val")[0].label == 3
    assert calls == [("allenai/openbookqa", "main", "test")]
    assert mmlu_calls == [("cais/mmlu", "virology", "validation")]


def test_hub_bad_row_names_row(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch, [{"question": "q", "passage": "p", "answer": True}, {"question": "q"}])
    with pytest.raises(DataError, match=r"google/boolq.*row 2: missing field 'passage'"):
        load_task("boolq", "train")


def test_hub_failure_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline")

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(DataError, match="offline.*BSLORA_DATA_DIR"):
        load_task("arc_easy", "train")
