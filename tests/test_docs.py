"""The README and the documentation site: the landing page's shape and links, its Python
blocks and the guide's run as written on a tiny model, the templates for a prior, a guide
and a method work, the generated configuration reference lists every key and option, the
API reference covers every module, the lock file pins every requirement, and no page talks
about where or by whom it was written."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
USER_FACING = [README, REPO / "CHANGELOG.md", REPO / "CONTRIBUTING.md", *PAGES]

#: what makes each page's Python blocks small: (text in the page, its replacement); each
#: must be found, so an edit of the page cannot silently run the real model
SMALL = {
    README: [('load_backbone("smollm2-135m")', "load_backbone(MODEL)"), ("limit=500", "limit=16"),
             ("steps=500", "steps=2"), ("range(50)", "range(2)")],
    DOCS / "guide" / "python-api.md": [
        ('load_backbone("smollm2-135m")', "load_backbone(MODEL)"), ("limit=500", "limit=16"),
        ("steps=500", "steps=2")],
    DOCS / "extending" / "pyro.md": [
        ('load_backbone("smollm2-135m")', "load_backbone(MODEL)"), ("range(50)", "range(2)")],
}

#: what no user-facing page may say: the machine or the sessions it was written in
FORBIDDEN = [r"\.\./shared", r"\bsessions?\b", r"no GPU was lent", r"\bissue\s*#?\s*\d+",
             r"this (2-core )?(CPU|machine)", r"/work/", r"\blent\b"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / "_hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from bslora_pyro.testing import tiny_llama, tiny_tokenizer

    folder = tmp_path_factory.mktemp("docs") / "model"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ the README


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 230
    headings = re.findall(r"^## (.+)$", text, re.M)
    for section in ("Install", "Quick start", "Python API", "Command line", "Extending",
                    "Results at a glance", "Citation", "License", "Contributing"):
        assert section in headings, section
    assert "arxiv.org/abs/2607.02182" in text
    assert "bslora calibrate" in text


def test_readme_and_root_files_link_to_files_that_exist():
    for page in (README, REPO / "CONTRIBUTING.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


@pytest.mark.parametrize("page", list(SMALL), ids=lambda p: p.name)
def test_python_blocks_run_as_written_on_a_tiny_model(page, tiny_model_dir, tmp_path,
                                                       monkeypatch):
    """Every Python block of the page, in order in one namespace, with only the model and
    the sizes made small."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"no local data at {DATA_DIR}")
    import pyro

    code = "\n".join(python_blocks(page))
    for old, new in SMALL[page]:
        assert old in code, f"{page.name} no longer contains {old!r}"
        code = code.replace(old, new)
    monkeypatch.setenv("BSLORA_DATA_DIR", str(DATA_DIR))
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    exec(compile(code, str(page), "exec"), {"MODEL": str(tiny_model_dir), "__name__": "page"})


def test_extension_templates_work(tiny_model_dir, tmp_path):
    """The prior, guide and method templates of the extending pages, in a fresh process
    (a prior or guide class, once defined, stays registered)."""
    priors = python_blocks(DOCS / "extending" / "priors-and-guides.md")
    method = python_blocks(DOCS / "extending" / "methods.md")
    assert len(priors) == 2 and len(method) == 1
    for name, code in (("decaying.py", priors[0]), ("tied.py", priors[1]),
                       ("fixed_temperature.py", method[0])):
        (tmp_path / name).write_text(code)
    script = tmp_path / "check.py"
    script.write_text(TEMPLATE_CHECK)
    result = subprocess.run([sys.executable, str(script), str(tiny_model_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "templates ok" in result.stdout


TEMPLATE_CHECK = '''
import sys

import torch

import decaying, fixed_temperature, tied  # noqa: F401  (defining the classes registers them)
from bslora_pyro import BayesianLora, available_guides, available_priors
from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.backbones import load_backbone
from bslora_pyro.bayesian_lora import load_posterior
from bslora_pyro.inference import SVITrainer, TrainConfig
from bslora_pyro.persistence import save_posterior
from bslora_pyro.scoring import ChoiceScorer
from bslora_pyro.testing import tiny_tokenizer



def questions(n):
    from bslora_pyro.data.example import MultipleChoiceExample
    from bslora_pyro.data.prompts import letter_prompt, loglik_pairs

    words = ["red", "blue", "green", "cat"]
    out = []
    for i in range(n):
        choices = tuple(words[(i + k) % 4] for k in range(3))
        question = f"Which is {choices[i % 3]}?"
        out.append(MultipleChoiceExample(f"q{i}", question, choices, i % 3,
                                         letter_prompt(question, choices),
                                         tuple(loglik_pairs(question, choices))))
    return out


assert "decaying" in available_priors() and "tied" in available_guides()
model_dir = sys.argv[1]
scorer = ChoiceScorer(tiny_tokenizer(), "choice_loglik")
adapter = AdapterConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "lm_head"])
config = TrainConfig(steps=3, batch_size=4, lr_factors=1e-2, lr_gates=1e-1)
data = questions(8)
batch = scorer.encode(data[:4])

model = BayesianLora(load_backbone(model_dir)[0], scorer, adapter, prior="decaying",
                     prior_kwargs={"p0": 0.9, "decay": 0.7}, guide={"name": "tied"})
start = {m: p.clone() for m, p in model.inclusion_probs().items()}
assert torch.allclose(start["lm_head"], torch.full((4,), (0.9 * (1 + 0.7 + 0.49 + 0.343)) / 4))
SVITrainer(model, scorer.encode, config).fit(data, progress=False)
moved = model.inclusion_probs()
assert all(p.unique().numel() == 1 for p in moved.values())  # tied: one probability a module
assert any(not torch.equal(moved[m], start[m]) for m in moved)
save_posterior(model, "posterior")
again = load_posterior("posterior", load_backbone(model_dir)[0], scorer)
assert again.prior.name == "decaying" and again.gate_guide.name == "tied"
assert torch.allclose(again.predict_logits(batch, deterministic=True),
                      model.predict_logits(batch, deterministic=True), atol=1e-5)

method = fixed_temperature.build(load_backbone(model_dir)[0], scorer, adapter,
                                 {"temperature": 2.0})
SVITrainer(method, scorer.encode, config).fit(data, progress=False)
plain = super(type(method), method).predict_logits(batch)
assert torch.allclose(method.predict_logits(batch), plain / 2.0)
method.save("method")
loaded = fixed_temperature.load("method", load_backbone(model_dir)[0], scorer)
assert torch.allclose(loaded.predict_logits(batch), method.predict_logits(batch), atol=1e-5)
try:
    fixed_temperature.build(load_backbone(model_dir)[0], scorer, adapter, {"temperature": 0})
except ValueError as error:
    assert "fixed_temperature.temperature must be positive" in str(error)
else:
    raise AssertionError("a temperature of 0 was accepted")
print("templates ok")
'''


# ------------------------------------------------------------------------------ the site


def _config_keys() -> set[str]:
    """Every config key as the reference writes it (a data set's keys without a prefix)."""
    from bslora_pyro.experiment.config import ExperimentConfig, SplitConfig

    keys: set[str] = set()

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys.add(f"{prefix}{f.name}")
            nested = [a for a in (hints[f.name], *typing.get_args(hints[f.name]))
                      if dataclasses.is_dataclass(a)]
            if nested and nested[0] is not SplitConfig:
                walk(nested[0], f"{prefix}{f.name}.")

    walk(ExperimentConfig, "")
    keys |= {f.name for f in dataclasses.fields(SplitConfig)}
    return keys


def test_configuration_reference_lists_every_key_and_option():
    from bslora_pyro.methods import available_methods, method_module

    page = DOCS / "guide" / "configuration.md"
    hook = load_hook("config_reference")
    assert hook.MARKER in page.read_text()
    text = hook.on_page_markdown(page.read_text(), page=None)
    assert hook.MARKER not in text
    for key in _config_keys():
        assert f"| `{key}` |" in text, key
    for name in available_methods():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        for f in dataclasses.fields(method_module(name).OPTIONS):
            assert f"| `method_options.{f.name}` |" in section, (name, f.name)
        if not dataclasses.fields(method_module(name).OPTIONS):
            assert "No options." in section


def test_api_reference_covers_every_module():
    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M))
    modules = set()
    for path in (REPO / "bslora_pyro").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert modules <= documented, sorted(modules - documented)


def test_every_page_is_in_the_navigation():
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed = set()

    def walk(node) -> None:
        if isinstance(node, str):
            listed.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in PAGES if "_snippets" not in p.parts}
    assert pages <= listed, sorted(pages - listed)


def test_sphinx_roles_become_links_or_code():
    roles = load_hook("sphinx_roles")
    assert roles.split_shared_entries("Args:\n    a / b: text\n        more\n    c: x") == (
        "Args:\n    a: text\n        more\n    b: text\n        more\n    c: x")
    assert roles.ROLE.sub(lambda m: m["target"], ":class:`~x.Y` and :meth:`Z.w`") == (
        "~x.Y and Z.w")


@pytest.mark.parametrize("page", USER_FACING, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_page_talks_about_where_it_was_written(page):
    text = page.read_text()
    for pattern in FORBIDDEN:
        match = re.search(pattern, text, re.I)
        assert match is None, f"{page.name}: {match.group(0)!r}"


# ------------------------------------------------------------------------------ metadata


def test_lock_file_pins_every_requirement_within_its_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = {}
    for line in (REPO / "scripts" / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    requirements = list(project["dependencies"])
    for extra in ("offline", "test", "docs", "tracking"):
        requirements += project["optional-dependencies"][extra]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue  # pinned by scripts/setup_env.sh
        assert name in lock, f"{req.name} is not in the lock file"
        assert req.specifier.contains(lock[name], prereleases=True), (text, lock[name])
    assert project["requires-python"] == ">=3.11"
