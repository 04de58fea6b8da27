"""Shared fixtures: tiny models, a byte tokenizer and synthetic questions."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from bslora_pyro.testing import THREAD_COUNTS, num_threads

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(min(2, torch.get_num_threads()))


def make_questions(n: int, num_choices: int = 3, seed: int = 0):
    """``n`` synthetic questions whose answer is recoverable from the text."""
    from bslora_pyro.data.example import MultipleChoiceExample
    from bslora_pyro.data.prompts import letter_prompt, loglik_pairs

    generator = torch.Generator().manual_seed(seed)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    out = []
    for i in range(n):
        picks = torch.randperm(len(words), generator=generator)[:num_choices].tolist()
        choices = tuple(words[j] for j in picks)
        label = int(torch.randint(num_choices, (1,), generator=generator))
        question = f"Which is {choices[label]}?"
        out.append(
            MultipleChoiceExample(
                uid=f"q{i}",
                question=question,
                choices=choices,
                label=label,
                letter_prompt=letter_prompt(question, choices),
                loglik_pairs=tuple(loglik_pairs(question, choices)),
            )
        )
    return out


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads{n}")
def thread_count(request):
    """Run a numerically sensitive test once per thread count (see ``THREAD_COUNTS``);
    modules opt in with ``pytestmark = pytest.mark.usefixtures("thread_count")``."""
    with num_threads(request.param):
        yield request.param


@pytest.fixture
def questions():
    return make_questions(24)
