"""Shared-prefix scoring gives the rewards of full-sequence scoring, with fewer tokens."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FLAVOURS, make_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.lm.chat import encode_pairs, pad_id
from pad_lightning.lm.scoring import score_pairs, shareable, shared_prefix_rewards


def _pairs(tok, prompts: int = 6, seed: int = 0):
    """Chat-rendered pairs: prompts of different lengths with 1-4 responses each (so chunks
    mix group sizes and padding on both sides)."""
    g = torch.Generator().manual_seed(seed)
    words = ["reverse", "abc", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    texts, responses = [], []
    for _ in range(prompts):
        count = int(torch.randint(2, 9, (1,), generator=g))
        texts.append(" ".join(words[int(i)] for i in torch.randint(0, 10, (count,), generator=g)))
        answers = int(torch.randint(1, 5, (1,), generator=g))
        responses.append(
            [
                " ".join(words[int(i)] for i in torch.randint(0, 10, (1 + j,), generator=g))
                for j in range(answers)
            ]
        )
    return encode_pairs(tok, texts, responses)


@pytest.fixture(scope="module", params=FLAVOURS)
def lm(request, tmp_path_factory):
    folder = make_tiny_lm(tmp_path_factory.mktemp(request.param), request.param, scale=3.0)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder
    )


@pytest.mark.parametrize("max_tokens", [16384, 40])
def test_shared_prefix_rewards_equal_full_sequence_rewards(lm, max_tokens):
    model, tok = lm
    pairs = _pairs(tok)
    assert shareable(model, pairs)
    full = score_pairs(model, pairs, pad_id(tok), max_tokens, share_prefix=False)
    shared = score_pairs(model, pairs, pad_id(tok), max_tokens)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    # the chunked-LM-head path (real vocabularies): a tiny logit budget forces it
    chunked = shared_prefix_rewards(model, pairs, pad_id(tok), max_tokens, logit_budget=64)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_each_prompt_is_run_once(lm):
    """Tokens through the model: every distinct prompt once plus the responses, instead of
    prompt + response for every pair."""
    model, tok = lm
    pairs = _pairs(tok)
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(
            int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1] :].sum())
        ),
        with_kwargs=True,
    )
    try:
        score_pairs(model, pairs, pad_id(tok))
    finally:
        hook.remove()
    prompts = {tuple(p.ids[: p.prompt_len]) for p in pairs}
    expected = sum(len(p) for p in prompts) + sum(len(p.ids) - p.prompt_len for p in pairs)
    assert sum(seen) == expected < sum(len(p.ids) for p in pairs)


def test_distinct_prompts_use_the_full_sequence_path(lm):
    model, tok = lm
    pairs = list({tuple(p.ids[: p.prompt_len]): p for p in _pairs(tok)}.values())
    assert not shareable(model, pairs)
