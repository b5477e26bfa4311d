"""Shared fixtures: the toy character tokenizer and tiny untrained models (session scope).

Tests must not mutate these objects; build a fresh model where a test needs to.
"""

from __future__ import annotations

import pytest
import torch

from pad_lightning.toy.tokenizer import SPECIAL_TOKENS, build_char_tokenizer
from pad_lightning.toy.zoo import ModelSpec, build_model

TINY = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


# The unit tests below use tiny models: one thread is fastest and avoids oversubscribing a busy
# machine (test_rollout: 25 s with two threads under load, under 1 s with one). Other test files are unaffected.
SINGLE_THREAD_MODULES = {
    "test_toy_tasks",
    "test_toy_tokenizer",
    "test_chat",
    "test_rewards",
    "test_calibration",
    "test_rollout",
    "test_metrics",
}


@pytest.fixture(autouse=True)
def _single_thread(request):
    if request.module.__name__.rpartition(".")[2] not in SINGLE_THREAD_MODULES:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_model(tokenizer, seed: int = 0):
    return build_model(TINY, tokenizer, seed=seed).eval()


@pytest.fixture(scope="session")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    """Random tiny model (near-uniform next-token distributions)."""
    return tiny_model(tok, seed=0)


@pytest.fixture(scope="session")
def teacher(tok):
    """A second random tiny model, standing in for the teacher."""
    return tiny_model(tok, seed=1)


@pytest.fixture(scope="session")
def sharp_model(tok):
    """A tiny model with scaled-up weights, so its outputs depend strongly on the input.

    Special tokens other than `<|end|>` are suppressed in generation so that greedy texts are
    non-empty printable strings that reveal any change in the generated token ids.
    """
    m = tiny_model(tok, seed=0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(30)
    m.generation_config.suppress_tokens = [
        tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != "<|end|>"
    ]
    return m


@pytest.fixture(scope="session")
def make_model(tok):
    """Factory for fresh tiny models (for tests that change weights or accumulate gradients)."""
    return lambda seed=0: tiny_model(tok, seed=seed)
