"""Shared fixtures: the toy character tokenizer and tiny untrained models (session scope).

Tests must not mutate these objects; build a fresh model where a test needs to.
"""

from __future__ import annotations

import os

import pytest
import torch

from pad_lightning.zoo.builder import ModelSpec, build_model
from pad_lightning.zoo.tokenizer import SPECIAL_TOKENS, build_char_tokenizer

TINY = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


# The unit tests below use tiny models: one thread is fastest and avoids oversubscribing a busy
# machine (test_rollout: 25 s with two threads under load, under 1 s with one). Other test files are unaffected.
SINGLE_THREAD_MODULES = {
    "test_tasks",
    "test_tokenizer",
    "test_chat",
    "test_scoring",
    "test_judge",
    "test_judge_check",
    "test_calibration",
    "test_rollout",
    "test_agreement",
    "test_loading",
    "test_export",
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


def sharpen(model, tok):
    """Scale up a tiny model's weights so its outputs depend strongly on the input (in place).

    Special tokens other than `<|end|>` are suppressed in generation so that greedy texts are
    non-empty printable strings that reveal any change in the generated token ids.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(30)
    model.generation_config.suppress_tokens = [
        tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != "<|end|>"
    ]
    return model


@pytest.fixture(scope="session")
def sharp_model(tok):
    """A tiny model whose greedy outputs reveal any change of input (see `sharpen`)."""
    return sharpen(tiny_model(tok, seed=0), tok)


class FullLogits(torch.nn.Module):
    """Wraps a causal LM so its forward lacks `logits_to_keep` (full logits at every position)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def subprocess_env(root) -> dict[str, str]:
    """Environment of an end-to-end `python -m pad_lightning.*` run: offline, caches in `root`."""
    env = dict(
        os.environ,
        PAD_LIGHTNING_CACHE=str(root / "cache"),
        HF_DATASETS_CACHE=str(root / "datasets-cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture(scope="session")
def make_model(tok):
    """Factory for fresh tiny models (for tests that change weights or accumulate gradients)."""
    return lambda seed=0: tiny_model(tok, seed=seed)
