"""Bad input through ``bslora train`` / ``evaluate``, by property: every config key, method
option and prior/guide keyword refuses values out of its range, of the wrong type, and
misspelt or missing keys with exit status 2, one line on stderr that names it, no
traceback, and no run folder written; data files are read and checked before the backbone
loads.

The ranges below are this test's own statement of what each key accepts, so removing a
declaration from the code makes the property fail; ``test_every_numeric_key_has_a_range``
makes a new numeric key without an entry here fail too.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import string
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_run import CONFIG, arc_row, save_tiny_model, write_arc

from bslora_pyro.cli import main
from bslora_pyro.experiment.config import ExperimentConfig, load_config
from bslora_pyro.methods import available_methods, method_module
from bslora_pyro.models import available_guides, available_priors, get_guide, get_prior
from bslora_pyro.typed import Range, field_types, init_parameters, ranges_of

SEED = ("int", Range(ge=0, le=2**32 - 1))
POS_INT, NONNEG_INT = ("int", Range(ge=1)), ("int", Range(ge=0))
POS, NONNEG = ("float", Range(gt=0)), ("float", Range(ge=0))
OPEN_UNIT, UNIT = ("float", Range(gt=0, lt=1)), ("float", Range(ge=0, lt=1))

#: every numeric key as ``--set`` names it, with the values it must accept
RANGES: dict[str, tuple[str, Range]] = {
    "seed": SEED, "log_every": POS_INT, "checkpoint_every": NONNEG_INT,
    "model.max_length": POS_INT,
    "data.train.limit": POS_INT, "data.validation_fraction": UNIT, "data.validation_seed": SEED,
    "adapter.r": POS_INT, "adapter.alpha": POS, "adapter.dropout": UNIT,
    "train.steps": POS_INT, "train.batch_size": POS_INT, "train.lr_factors": NONNEG,
    "train.lr_gates": NONNEG, "train.weight_decay": NONNEG, "train.warmup_ratio": UNIT,
    "train.num_particles": POS_INT, "train.grad_clip": NONNEG, "train.kl_weight": NONNEG,
    "train.kl_warmup_ratio": UNIT,
    "train.seed": SEED, "train.grad_accumulation_steps": POS_INT,
    "train.validate_every": NONNEG_INT, "train.patience": NONNEG_INT,
    "predict.num_samples": POS_INT, "predict.batch_size": POS_INT,
    "blob:prior_std": POS, "blob:eps": POS, "blob:kl_lr": NONNEG, "bslora:factor_prior_std": POS,
    "ensemble:members": POS_INT, "laplace:prior_precision": POS, "laplace:weight_decay": NONNEG,
    "laplace:predictive_draws": POS_INT, "random_mask:keep_probability": ("float",
                                                                           Range(gt=0, le=1)),
    "map:weight_decay": NONNEG, "map:factor_prior_std": POS, "mc_dropout:dropout": OPEN_UNIT,
    "random_mask:num_masked": NONNEG_INT, "temperature_scaling:holdout_fraction": OPEN_UNIT,
    "temperature_scaling:split_seed": SEED,
    "prior=bernoulli:p0": OPEN_UNIT, "prior=beta_bernoulli:a": POS,
    "prior=beta_bernoulli:b": POS, "prior=hierarchical_beta:a": POS,
    "prior=hierarchical_beta:b": POS, "prior=stick_breaking:alpha0": POS,
    **{f"guide={g}:{k}": POS for g in ("mean_field", "straight_through", "autoregressive",
                                       "amortized") for k in ("temperature", "temperature_final")},
    "guide=amortized:hidden": POS_INT, "guide=amortized:momentum": ("float", Range(gt=0, le=1)),
}
#: command-line flags that set a config value
FLAGS = {"--num-samples": POS_INT, "--limit": POS_INT}
SECTIONS = ("model", "data.train", "adapter", "train", "predict", "tracking")


def target(name: str) -> tuple[list[str], str]:
    """``(overrides that select the owner, the --set key)`` of a RANGES-style name."""
    if ":" not in name:
        return [], name
    owner, key = name.split(":")
    if owner.startswith("prior="):
        return [f"method_options.prior={owner[6:]}"], f"method_options.prior_kwargs.{key}"
    if owner.startswith("guide="):
        return [f"method_options.guide.name={owner[6:]}"], f"method_options.guide.{key}"
    return [f"method={owner}"], f"method_options.{key}"


def declared_keys() -> dict[str, typing.Any]:
    """Every scalar key the code declares, named as RANGES names them, with its type."""
    keys: dict[str, typing.Any] = {}

    def walk(cls, prefix: str) -> None:
        for name, hint in field_types(cls).items():
            path = f"{prefix}{name}"
            if path in SECTIONS:
                walk(_section(hint), f"{path}.")
            elif path not in ("method_options", "data.eval", "data"):
                keys[path] = hint
    walk(ExperimentConfig, "")
    walk(_section(field_types(ExperimentConfig)["data"]), "data.")
    for method in available_methods():
        for name, hint in field_types(method_module(method).OPTIONS).items():
            keys[f"{method}:{name}"] = hint
    for prior in available_priors():
        for name, hint in init_parameters(get_prior(prior), ("module_ranks",)).items():
            keys[f"prior={prior}:{name}"] = hint
    for guide in available_guides():
        for name, hint in init_parameters(get_guide(guide), ("prior", "feature_size")).items():
            keys[f"guide={guide}:{name}"] = hint
    return keys


def _section(hint):
    return typing.get_args(hint)[0] if typing.get_args(hint) else hint


def _kinds(hint) -> set[type]:
    """The plain types a key accepts (``int`` for an int key, ``{str, list}`` for a name or
    a list of names, ...)."""
    inner, _ = ranges_of(hint)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    options = typing.get_args(inner) if typing.get_origin(inner) in (typing.Union,
                                                                     type(int | str)) else [inner]
    out = set()
    for option in options:
        out |= _kinds(option) if typing.get_origin(option) is typing.Annotated else {
            typing.get_origin(option) or option}
    return out


KEYS = declared_keys()
NUMERIC = {k for k, hint in KEYS.items() if _kinds(hint) & {int, float}}


def test_every_numeric_key_has_a_range():
    assert NUMERIC == set(RANGES)


# --------------------------------------------------------------------------- strategies


def outside(kind: str, bound: Range) -> st.SearchStrategy:
    """Values of ``kind`` just or far outside ``bound`` (and NaN / infinities for floats)."""
    if kind == "int":
        parts = [st.integers(max_value=int(bound.ge) - 1)] if bound.ge is not None else []
        parts += [st.integers(min_value=int(bound.le) + 1)] if bound.le is not None else []
        return st.one_of(parts)
    plain = {"allow_nan": False, "allow_infinity": False}
    parts = [st.sampled_from([math.nan, math.inf, -math.inf])]
    if bound.gt is not None:
        parts.append(st.floats(max_value=bound.gt, **plain))
    if bound.ge is not None:  # (-0.0 is not below 0)
        parts.append(st.floats(max_value=bound.ge, **plain).filter(lambda v: v != bound.ge))
    if bound.lt is not None:
        parts.append(st.floats(min_value=bound.lt, **plain))
    if bound.le is not None:
        parts.append(st.floats(min_value=bound.le, **plain).filter(lambda v: v != bound.le))
    return st.one_of(parts)


def inside(kind: str, bound: Range) -> st.SearchStrategy:
    low = bound.ge if bound.ge is not None else bound.gt
    high = bound.le if bound.le is not None else bound.lt
    if kind == "int":
        top = 10**6 if high is None else int(high) - (bound.lt is not None)
        return st.integers(min_value=int(low) + (bound.gt is not None), max_value=top)
    return st.floats(min_value=low, max_value=high if high is not None else 1e6,
                     exclude_min=bound.gt is not None, exclude_max=bound.lt is not None)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_POOLS = {
    int: st.integers(-5, 5),
    float: st.floats(-5, 5).filter(lambda x: not x.is_integer()),
    bool: st.booleans(),
    str: st.text(string.ascii_letters + "_-", min_size=1, max_size=8),
    list: st.lists(st.integers(0, 3), max_size=2),
    dict: st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), min_size=1, max_size=1),
}


def wrong_type(hint) -> st.SearchStrategy:
    """Values of a type the key does not take (an int is a float; ``1e-4`` text is one)."""
    kinds = _kinds(hint)
    if float in kinds:
        kinds |= {int}
    pools = [pool for kind, pool in _POOLS.items() if kind not in kinds]
    if float in kinds and str not in kinds:
        pools = [p.filter(lambda v: not (isinstance(v, str) and _FLOAT_TEXT.fullmatch(v)))
                 if p is _POOLS[str] else p for p in pools]
    return st.one_of(pools)


def as_yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


# --------------------------------------------------------------------------- the CLI

#: bounded so the module stays fast; derandomized so a run is reproducible, and no
#: example database is written
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny saved Llama, a synthetic ARC folder and one trained run, made once."""
    root = tmp_path_factory.mktemp("ranges")
    model, data = save_tiny_model(root / "model"), write_arc(root / "data", n=16)
    run = root / "run"
    code, err = cli(["train", str(CONFIG), "--out", str(run), "--data-dir", str(data), "--quiet",
                     "--set", f"model.name={model}", "--set", "train.steps=1"])
    assert code == 0, err
    return {"root": root, "model": model, "data": data, "run": run}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("BSLORA_DATA_DIR", raising=False)


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


_RUNS = itertools.count()


def refused(tiny, overrides: list[str], needle: str, command: str = "train") -> None:
    """``bslora train`` with ``overrides`` exits 2 with one line naming ``needle``, no
    traceback, and no run folder."""
    out = tiny["root"] / f"refused{next(_RUNS)}"  # one each, so a failure stays its own
    argv = ["train", str(CONFIG), "--out", str(out), "--data-dir", str(tiny["data"]), "--quiet",
            "--set", f"model.name={tiny['model']}", "--set", "train.steps=1"]
    for item in overrides:
        argv += ["--set", item]
    code, err = cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (argv, err)
    assert lines[0].startswith(f"bslora {command}: error: ") and needle in lines[0], (needle, err)
    assert "Traceback" not in err
    assert not out.exists()


def with_value(name: str, value) -> tuple[list[str], str]:
    select, key = target(name)
    assert yaml.safe_load(as_yaml(value)) == value or value != value  # NaN
    return [*select, f"{key}={as_yaml(value)}"], key


TYPED = sorted(k for k, hint in KEYS.items() if not _kinds(hint) <= {dict, typing.Any})


@pytest.mark.parametrize("name", sorted(RANGES))
@settings(PROPERTY, max_examples=6)
@given(data=st.data())
def test_a_value_out_of_range_is_one_line_naming_the_key(tiny, name, data):
    refused(tiny, *with_value(name, data.draw(outside(*RANGES[name]))))


@pytest.mark.parametrize("name", TYPED)
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(tiny, name, data):
    refused(tiny, *with_value(name, data.draw(wrong_type(KEYS[name]))))


@pytest.mark.parametrize("name", sorted(KEYS))
@settings(PROPERTY, max_examples=2)
@given(suffix=st.sampled_from(["x", "s", "_2"]))
def test_a_misspelt_key_is_one_line_naming_it(tiny, name, suffix):
    select, key = target(name)
    head, _, last = key.rpartition(".")
    refused(tiny, [*select, f"{head + '.' if head else ''}{last + suffix}=1"], last + suffix)


@st.composite
def missing(draw) -> tuple[list[str], str]:
    """A set without a key it needs: task or split of a built-in task, a column of your own
    data."""
    where = draw(st.sampled_from(["data.train", "data.eval[0]"]))
    given_ = draw(st.sampled_from([{"task": "arc_easy"}, {"split": "dev"},
                                   {"path": "x.jsonl", "question": "q", "choices": "c"},
                                   {"path": "x.jsonl", "question": "q", "answer": "a"},
                                   {"path": "x.jsonl", "choices": "c", "answer": "a"}]))
    if where == "data.train":
        return [f"data.train={as_yaml(given_)}"], "data.train"
    return [f"data.eval={as_yaml([given_])}"], where


@settings(PROPERTY, max_examples=15)
@given(case=missing())
def test_a_missing_key_is_one_line_naming_its_set(tiny, case):
    refused(tiny, *case)


def test_an_empty_eval_list_is_refused(tiny):
    refused(tiny, ["data.eval=[]"], "data.eval must list at least one")


@pytest.mark.parametrize("name", sorted(RANGES))
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_values_in_range_are_accepted(name, data):
    select, key = target(name)
    kind, bound = RANGES[name]
    if name == "random_mask:num_masked":
        bound = Range(ge=0, lt=4)  # and below adapter.r (4 in the tiny config)
    value = data.draw(inside(kind, bound))
    extra = ["data.validation_fraction=0.25"] if name == "train.validate_every" else []
    load_config(CONFIG, [*select, f"{key}={as_yaml(value)}", *extra])


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("flag", sorted(FLAGS))
@settings(PROPERTY, max_examples=10)
@given(data=st.data())
def test_evaluate_flags_are_checked_as_their_config_keys(tiny, flag, data):
    value = data.draw(outside(*FLAGS[flag]))
    before = snapshot(tiny["run"])
    code, err = cli(["evaluate", str(tiny["run"]), "--task", "arc_challenge", "--data-dir",
                     str(tiny["data"]), "--quiet", flag, str(value)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("bslora evaluate: error: ") and flag in lines[0], err
    assert snapshot(tiny["run"]) == before


# --------------------------------------------------------------------------- the two reports


def test_the_reported_cases_are_one_line_errors_naming_the_key(tiny):
    refused(tiny, ["train.lr_factors=-1"], "train.lr_factors must be a non-negative number, got -1")
    code, err = cli(["evaluate", str(tiny["run"]), "--task", "arc_easy", "--num-samples", "0",
                     "--data-dir", str(tiny["data"]), "--quiet"])
    assert code == 2 and err.strip() == ("bslora evaluate: error: --num-samples "
                                         "(predict.num_samples) must be a positive integer, got 0")


# --------------------------------------------------------------------------- data first


@pytest.fixture
def no_backbone(monkeypatch):
    """Record calls of the backbone loader (and refuse them)."""
    import bslora_pyro.backbones

    calls = []

    def load_backbone(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the backbone loader was called")

    monkeypatch.setattr(bslora_pyro.backbones, "load_backbone", load_backbone)
    return calls


def test_a_bad_eval_row_in_train_fails_before_the_backbone_loads(tiny, no_backbone):
    rows = [json.dumps(arc_row(i)) for i in range(4)] + [json.dumps(arc_row(4, answer="Z"))]
    data = write_arc(tiny["root"] / "bad-eval", n=16, rows={"challenge_dev": rows})
    out = tiny["root"] / "bad-eval-run"
    code, err = cli(["train", str(CONFIG), "--out", str(out), "--data-dir", str(data), "--quiet",
                     "--set", f"model.name={tiny['model']}"])
    assert code == 2 and "ARC-Challenge-Dev.jsonl, line 5" in err and "'Z'" in err, err
    assert no_backbone == [] and not out.exists()


def test_a_bad_row_of_an_evaluate_file_fails_before_the_backbone_loads(tiny, no_backbone):
    rows = [{"q": f"Which is {w}?", "options": ["red", "blue", "cat"], "label": 1}
            for w in ("red", "blue", "cat")]
    rows[2]["label"] = 7
    path = tiny["root"] / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = snapshot(tiny["run"])
    code, err = cli(["evaluate", str(tiny["run"]), "--task", f"file:{path}", "--quiet",
                     "--column", "question=q", "--column", "choices=options",
                     "--column", "answer=label", "--column", "answer_type=index"])
    assert code == 2 and "mine.jsonl, line 3" in err and "answer 7" in err, err
    assert no_backbone == [] and snapshot(tiny["run"]) == before
