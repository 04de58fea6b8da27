"""Your own multiple-choice data by column mapping: loading, prompts, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bslora_pyro.data import DataError
from bslora_pyro.data.custom import CustomTask, load_custom
from bslora_pyro.data.prompts import letter_prompt, loglik_pairs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "experiments" / "data"
HEADER = "Q,opt_a,opt_b,opt_c,key"


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def csv_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def json_task(path: Path, **kwargs) -> CustomTask:
    mapping = {"question": "q", "choices": "ch", "answer": "ans"} | kwargs
    return CustomTask(path=str(path), **mapping)


def csv_task(path: Path, **kwargs) -> CustomTask:
    mapping = {"question": "Q", "choices": ("opt_a", "opt_b", "opt_c"), "answer": "key",
               "answer_type": "letter"} | kwargs
    return CustomTask(path=str(path), **mapping)


def row(q: str = "Which is red?", ch=("sky", "apple", "grass"), ans=1, **extra) -> dict:
    return {"q": q, "ch": list(ch), "ans": ans, **extra}


# --------------------------------------------------------------------------- loading


def test_jsonl_examples_match_the_built_in_prompts(tmp_path):
    path = jsonl(tmp_path / "mine.jsonl", [row(), "", row("Which is green?", ans=2)])
    examples = load_custom(json_task(path))
    assert [e.uid for e in examples] == ["mine/0", "mine/1"]
    assert [e.label for e in examples] == [1, 2]
    first = examples[1]
    assert first.choices == ("sky", "apple", "grass")
    assert first.letter_prompt == letter_prompt("Which is green?", first.choices)
    assert first.loglik_pairs == loglik_pairs("Which is green?", first.choices)


def test_shipped_files_load_with_their_own_columns():
    train = load_custom(CustomTask(path=str(SHIPPED / "science_train.jsonl"), question="prompt",
                                   choices="options", answer="correct", answer_type="text",
                                   id="qid"))
    geo = load_custom(CustomTask(path=str(SHIPPED / "geography.csv"), question="Question",
                                 choices=("Option A", "Option B", "Option C", "Option D"),
                                 answer="Key", answer_type="letter"))
    assert len(train) == 32 and len(geo) == 16
    assert train[0].uid == "science_train/train-001"
    assert train[0].choices[train[0].label] == "carbon dioxide"
    assert {e.num_choices for e in geo} == {3, 4}  # an empty last option is dropped
    egypt = next(e for e in geo if "Egypt" in e.question)
    assert egypt.choices[egypt.label] == "Africa"


def test_csv_letter_and_index_answers_and_limit(tmp_path):
    path = csv_file(tmp_path / "qs.csv", HEADER, "Which is red?,sky,apple,grass,b",
                    '"Which one,\nspanning lines?",x,y,,A', "Which is green?,sky,apple,grass,C")
    examples = load_custom(csv_task(path))
    assert [e.label for e in examples] == [1, 0, 2]
    assert examples[1].choices == ("x", "y") and examples[1].question.startswith("Which one,")
    assert len(load_custom(csv_task(path), limit=2)) == 2
    index = csv_file(tmp_path / "idx.csv", "Q,opt_a,opt_b,opt_c,key", "Which?,1,2,3,2")
    assert load_custom(csv_task(index, answer_type="index"))[0].label == 2


def test_text_answers_context_and_prompt_template(tmp_path):
    path = jsonl(tmp_path / "ctx.jsonl", [row(ans="grass", passage="Grass is green.", src="bk")])
    plain = load_custom(json_task(path, answer_type="text", context="passage"))[0]
    assert plain.label == 2 and plain.context == "Grass is green."
    assert plain.loglik_pairs[0][0] == "Question: Grass is green. Which is red?\nAnswer:"
    templated = load_custom(json_task(path, answer_type="text", context="passage",
                                      prompt="[{src}] {context}\nQ: {question}"))[0]
    assert templated.question == "[bk] Grass is green.\nQ: Which is red?"
    assert templated.letter_prompt == letter_prompt(templated.question, templated.choices)


def test_nested_columns_and_a_hub_style_dataset_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    jsonl(folder / "validation.jsonl", [
        {"question": {"stem": "Which is red?"},
         "choices": {"label": ["A", "B"], "text": ["apple", "sky"]}, "answerKey": "A"}])
    task = CustomTask(path=str(folder), format="hub", split="validation",
                      question="question.stem", choices="choices.text", answer="answerKey",
                      answer_type="letter")
    (example,) = load_custom(task)
    assert example.choices == ("apple", "sky") and example.label == 0
    assert task.label == f"{folder}:validation" and example.uid == f"{folder}:validation/0"


# --------------------------------------------------------------------------- malformed files


def error(task: CustomTask, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        load_custom(task)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_missing_file_is_named(tmp_path):
    error(json_task(tmp_path / "nope.jsonl"), "missing data file", "nope.jsonl")


def test_empty_jsonl_file(tmp_path):
    error(json_task(jsonl(tmp_path / "empty.jsonl", ["", ""])), "empty.jsonl is empty")


def test_csv_with_a_header_and_no_rows(tmp_path):
    error(csv_task(csv_file(tmp_path / "head.csv", HEADER)), "head.csv is empty")


def test_invalid_json_names_file_and_line(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [row(), "", '{"q": broken'])
    error(json_task(path), "bad.jsonl, line 3: invalid JSON")


def test_a_line_that_is_not_an_object(tmp_path):
    error(json_task(jsonl(tmp_path / "list.jsonl", [row(), "[1, 2]"])),
          "list.jsonl, line 2: expected a JSON object, got list")


def test_missing_column_is_named_with_the_columns_there(tmp_path):
    path = jsonl(tmp_path / "cols.jsonl", [row()])
    error(json_task(path, answer="answer"), "no column 'answer' (answer)", "'q', 'ch', 'ans'")


def test_missing_csv_choice_column(tmp_path):
    path = csv_file(tmp_path / "cols.csv", HEADER, "Which?,a,b,c,A")
    error(csv_task(path, choices=("opt_a", "opt_d")), "cols.csv", "no column 'opt_d' (choices)")


def test_prompt_template_naming_an_unknown_column(tmp_path):
    path = jsonl(tmp_path / "tpl.jsonl", [row()])
    error(json_task(path, prompt="{topic}: {question}"), "no column 'topic' (prompt)")


def test_field_missing_in_one_row_names_its_line(tmp_path):
    rows = [row(), {"q": "Which?", "ans": 0}]
    error(json_task(jsonl(tmp_path / "gap.jsonl", rows)), "gap.jsonl, line 2", "'ch'")


def test_empty_question_names_file_line_and_column(tmp_path):
    path = jsonl(tmp_path / "blank.jsonl", [row(), row(q="  ")])
    error(json_task(path), "blank.jsonl, line 2: column 'q' (question) is empty")


def test_text_answer_not_among_the_choices(tmp_path):
    path = jsonl(tmp_path / "text.jsonl", [row(ans="apple"), row(ans="pear")])
    error(json_task(path, answer_type="text"),
          "text.jsonl, line 2: answer 'pear' is not among the choices")


def test_index_answer_out_of_range(tmp_path):
    error(json_task(jsonl(tmp_path / "idx.jsonl", [row(ans=3)])),
          "idx.jsonl, line 1: answer 3 is not among the 3 choices")


def test_negative_or_non_numeric_index(tmp_path):
    error(json_task(jsonl(tmp_path / "neg.jsonl", [row(ans=-1)])), "answer -1")
    error(json_task(jsonl(tmp_path / "word.jsonl", [row(ans="one")])),
          "answer 'one' is not a 0-based choice index")


def test_letter_answer_not_among_the_choices(tmp_path):
    path = csv_file(tmp_path / "letter.csv", HEADER, "Which?,a,b,c,A", "Which?,a,b,,C")
    error(csv_task(path), "letter.csv, line 3: answer 'C' is not among the choices A-B")


def test_fewer_than_two_choices_in_a_list_column(tmp_path):
    error(json_task(jsonl(tmp_path / "one.jsonl", [row(ch=["only"], ans=0)])),
          "one.jsonl, line 1: 1 choice(s); need at least 2")


def test_fewer_than_two_choices_in_choice_columns(tmp_path):
    path = csv_file(tmp_path / "one.csv", HEADER, "Which?,a,,,A")
    error(csv_task(path), "one.csv, line 2: 1 choice(s); need at least 2")


def test_gap_between_choice_columns(tmp_path):
    path = csv_file(tmp_path / "gap.csv", HEADER, "Which?,a,,c,A")
    error(csv_task(path), "gap.csv, line 2: choice column 'opt_b' is empty but a later one")


def test_csv_row_with_the_wrong_number_of_cells(tmp_path):
    path = csv_file(tmp_path / "cells.csv", HEADER, "Which?,a,b,c,A,extra")
    error(csv_task(path), "cells.csv, line 2: 6 cells, but the header has 5 columns")


def test_choice_column_that_is_not_a_list(tmp_path):
    path = jsonl(tmp_path / "str.jsonl", [{**row(), "ch": "a|b"}])
    error(json_task(path), "str.jsonl, line 1: column 'ch' (choices) must hold a list")


def test_repeated_ids(tmp_path):
    path = jsonl(tmp_path / "ids.jsonl", [row(qid="x"), row(qid="x")])
    error(json_task(path, id="qid"), "ids.jsonl, line 2: id 'ids/x' repeats line 1")


def test_json_array_rows_are_named_by_position(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([row(), row(ans=7)]))
    error(json_task(path), "array.json, row 2: answer 7 is not among the 3 choices")
