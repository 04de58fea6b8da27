"""Tiny randomly initialised models and a byte-level tokenizer for fast tests.

These never touch the network: the tokenizer is built in memory and the models
are created from small configs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Tolerance for two float32 computations that are equal in exact arithmetic but may round
#: differently (fast path vs slow path, chunked vs whole, cached vs uncached, another thread
#: count or CPU): relative, about 80 float32 ulps, with a small absolute floor for values
#: near zero. Summed log-likelihoods reach ~100, where one ulp is already 7.6e-6.
ROUNDING = {"rtol": 1e-5, "atol": 1e-5}


def assert_equal_up_to_rounding(actual, expected, msg: str | None = None) -> None:
    """``actual == expected`` up to float32 rounding (see :data:`ROUNDING`)."""
    torch.testing.assert_close(actual, expected, **ROUNDING, msg=msg)


#: Two intra-op thread counts: kernels split their reductions differently under each, so
#: a tolerance too tight for another machine's summation order fails in the suite itself.
THREAD_COUNTS = (1, 2)


@contextmanager
def num_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def tiny_tokenizer(padding_side: str = "left"):
    """A byte-level tokenizer (one token per byte) with pad/bos/eos specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side=padding_side,
    )
    return tok


def tiny_llama(vocab_size: int = 259, num_layers: int = 2, hidden: int = 32, seed: int = 0):
    """A 2-layer Llama causal LM small enough to run in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=256,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 259, num_layers: int = 2, hidden: int = 32, seed: int = 0):
    """A 2-layer GPT-2 (Conv1D projections) causal LM."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        bos_token_id=257,
        eos_token_id=258,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_bert(vocab_size: int = 259, num_layers: int = 2, hidden: int = 32, seed: int = 0):
    """A 2-layer BERT with a multiple-choice head."""
    from transformers import BertConfig, BertForMultipleChoice

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        pad_token_id=256,
    )
    return BertForMultipleChoice(config).eval()
