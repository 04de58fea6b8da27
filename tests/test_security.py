"""The package never deserializes code: no pickle, weights-only torch.load, safe YAML, no shell,
no remote code unless a config asks for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bslora_pyro"
SOURCES = sorted(PACKAGE.rglob("*.py"))

FORBIDDEN = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|marshal|shelve)\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "os.system / os.popen": re.compile(r"\bos\.(system|popen)\s*\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "yaml.load / unsafe_load": re.compile(r"\byaml\.(load|unsafe_load|full_load)\s*\("),
    "eval / exec": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
}


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every ``name(...)`` call (parentheses balanced)."""
    out = []
    for match in re.finditer(re.escape(name) + r"\s*\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[match.end() : i - 1])
    return out


def test_sources_found():
    assert len(SOURCES) > 10


@pytest.mark.parametrize("rule", list(FORBIDDEN))
def test_no_unsafe_pattern(rule):
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN[rule].search(line)
    ]
    assert not hits, f"{rule} in the package:\n" + "\n".join(hits)


def test_torch_load_is_weights_only():
    for path in SOURCES:
        for args in _calls(path.read_text(), "torch.load"):
            assert re.search(r"weights_only\s*=\s*True", args), f"{path}: torch.load({args})"


def test_remote_code_is_off_by_default():
    import inspect

    from bslora_pyro.backbones import load_backbone
    from bslora_pyro.experiment.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    default = inspect.signature(load_backbone).parameters["trust_remote_code"].default
    assert default is False


def test_checker_catches_what_it_should():
    bad = 'import pickle\nx = torch.load(f)\nsubprocess.run(c, shell=True)\neval(s)\n'
    assert FORBIDDEN["pickle"].search(bad) and FORBIDDEN["shell=True"].search(bad)
    assert FORBIDDEN["eval / exec"].search(bad) and not FORBIDDEN["eval / exec"].search("m.eval()")
    assert _calls(bad, "torch.load") == ["f"]
