"""Helpers for end-to-end CLI tests: a tiny Llama saved to disk and a synthetic ARC folder."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny.yaml"
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama and the byte tokenizer, as a local model folder."""
    from bslora_pyro.testing import tiny_llama, tiny_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tiny_llama(seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def arc_row(i: int, answer: str | None = None) -> dict:
    picks = [WORDS[(i + k) % len(WORDS)] for k in range(3)]
    key = answer or "ABC"[i % 3]
    return {
        "id": f"q{i}",
        "question": {
            "stem": f"Which is {picks['ABC'.index(key)] if key in 'ABC' else picks[0]}?",
            "choices": [{"text": t, "label": label} for t, label in zip(picks, "ABC", strict=True)],
        },
        "answerKey": key,
    }


def write_arc(root: Path, n: int = 24, rows: dict[str, list[str]] | None = None) -> Path:
    """ARC-Easy train/dev and ARC-Challenge dev files with ``n`` synthetic questions each;
    ``rows`` replaces a file's lines (keys ``easy_train``, ``easy_dev``, ``challenge_dev``)."""
    files = {
        "easy_train": root / "arc" / "ARC-Easy" / "ARC-Easy-Train.jsonl",
        "easy_dev": root / "arc" / "ARC-Easy" / "ARC-Easy-Dev.jsonl",
        "challenge_dev": root / "arc" / "ARC-Challenge" / "ARC-Challenge-Dev.jsonl",
    }
    for key, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (rows or {}).get(key)
        if lines is None:
            lines = [json.dumps(arc_row(i)) for i in range(n)]
        path.write_text("".join(line + "\n" for line in lines))
    return root


def error_line(stderr: str, command: str = "train") -> str:
    """The CLI's error message: exactly one line ``bslora <command>: error: ...``
    (Hugging Face progress bars, which also write to stderr, are ignored)."""
    lines = [line for line in stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bslora {command}: error: "), lines[0]
    return lines[0]
