"""Tests for the inverse-CDF sampler and the decoding loop (pad_lightning.lm.sampling).

The sampler must draw from exactly the distribution HF's warpers define: `warp` is compared with
transformers' own warpers, and draws are checked with a chi-square goodness-of-fit test (fixed
seeds; a control shows that the same test rejects a distribution off by a few percent, so a
pass is not vacuous). Greedy decoding must give HF's greedy tokens on two architectures.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.sampling import decode, hf_only_settings, sample_tokens, warp

PROMPTS = ["rev abc", "sort 3 1 2", "123+456=", "rev " + "abcdefghij" * 3]


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `probs` (cells with p > 0)."""
    keep = probs > 0
    expected = probs[keep].double() * counts.sum()
    stat = ((counts[keep].double() - expected) ** 2 / expected).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2))


def draws(logits: torch.Tensor, count: int, seed: int, block: int = 256) -> torch.Tensor:
    """Histogram of `count` inverse-CDF draws from one row of logits."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sample_tokens(logits.expand(count, -1), gen, block=block)
    return torch.bincount(tokens, minlength=logits.shape[-1])


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.8, 12, 0.9), (2.0, 1, 0.5)],
)
def test_warp_equals_hf_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(16, 50) * 3
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = warp(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = ~torch.isinf(got)
    torch.testing.assert_close(got[finite], expected[finite])


@pytest.mark.parametrize("block", [256, 8, 7])
def test_inverse_cdf_draws_the_softmax_distribution(block):
    """One level (256: a small vocabulary), and two levels with a partial last block (8, 7),
    with filtered tokens at block edges, a whole filtered block (16-23 for 8) and the
    vocabulary's end."""
    torch.manual_seed(1)
    logits = torch.randn(45) * 2
    zero = [0, 7, 16, 17, 18, 19, 20, 21, 22, 23, 31, 44]
    logits[zero] = float("-inf")
    probs = logits.softmax(-1)
    counts = draws(logits, 400_000, seed=0, block=block)
    assert counts[zero].sum() == 0
    assert chi_square_p(counts, probs) > 1e-3
    # the test has power: a distribution 5% off on one common token is rejected
    wrong = probs.clone()
    top = int(probs.argmax())
    wrong[top] *= 1.05
    assert chi_square_p(counts, wrong / wrong.sum()) < 1e-6


def test_torch_multinomial_passes_the_same_test():
    """The reference sampler (HF's) under the same test: the two are interchangeable."""
    torch.manual_seed(1)
    logits = torch.randn(40) * 2
    probs = logits.softmax(-1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(probs.expand(400_000, -1), 1, generator=gen).squeeze(-1)
    assert chi_square_p(torch.bincount(tokens, minlength=40), probs) > 1e-3


def test_one_token_left_is_always_drawn():
    logits = torch.randn(64, 1000)
    logits[:, 0] = 50.0  # almost all mass; top-k 1 leaves it alone
    tokens = sample_tokens(warp(logits, 1.0, 1, 1.0))
    assert torch.equal(tokens, logits.argmax(-1))
    single = torch.full((8, 30), float("-inf"))
    single[:, 29] = 0.0  # one finite logit, at the very end of the vocabulary
    assert (sample_tokens(single) == 29).all()


def test_large_vocabulary_rows_are_independent():
    """Rows draw independently: uniform logits over 32k tokens rarely repeat a token."""
    gen = torch.Generator().manual_seed(0)
    tokens = sample_tokens(torch.zeros(256, 32768), gen)
    assert len(set(tokens.tolist())) >= 250  # birthday bound: ~1 collision expected


def _left_padded(tok, prompts):
    from pad_lightning.lm.chat import encode_prompt

    encoded = [encode_prompt(tok, p) for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e)
        attn[i, width - len(e) :] = 1
    return ids, attn


def test_first_token_distribution_of_decode(tok, model):
    """decode's first sampled token follows the warped softmax of the model's next-token logits."""
    ids, attn = _left_padded(tok, ["rev abc"])
    logits = model(input_ids=ids, attention_mask=attn).logits[0, -1].detach()
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 20, 0.9)]:
        probs = warp(logits[None], temperature, top_k, top_p).softmax(-1)[0]
        rows = 60_000
        gen = torch.Generator().manual_seed(3)
        stops = [tok.eos_token_id]
        first = decode(
            model,
            ids.expand(rows, -1),
            attn.expand(rows, -1),
            1,
            stops,
            tok.pad_token_id,
            temperature,
            top_k,
            top_p,
            generator=gen,
        )[:, 0]
        counts = torch.bincount(first, minlength=len(probs))
        assert counts[probs == 0].sum() == 0
        assert chi_square_p(counts, probs) > 1e-3


@pytest.mark.parametrize("flavour", ["char", "bytelevel"])
def test_greedy_decode_equals_hf_greedy(tmp_path, flavour, sharp_model, tok):
    if flavour == "char":
        model, tokenizer = sharp_model, tok
    else:
        path = make_tiny_lm(tmp_path / "qwen", "bytelevel", scale=8.0)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    for batch_size in (256, 2):
        cfg = dict(max_new_tokens=12, batch_size=batch_size)
        ours = generate(model, tokenizer, PROMPTS, 1, SamplingConfig(**cfg), greedy=True)
        hf = generate(
            model, tokenizer, PROMPTS, 1, SamplingConfig(**cfg, sampler="hf"), greedy=True
        )
        assert ours.texts == hf.texts
        assert torch.equal(ours.lengths, hf.lengths)
        assert torch.equal(ours.truncated, hf.truncated)


def test_sampled_rollouts_stop_and_pad_like_hf(sharp_model, tok):
    torch.manual_seed(0)
    gens = generate(sharp_model, tok, PROMPTS, 6, SamplingConfig(max_new_tokens=10))
    assert [len(g) for g in gens.texts] == [6] * len(PROMPTS)
    assert (gens.lengths <= 10).all() and (gens.lengths >= 1).all()
    assert (gens.lengths[gens.truncated] == 10).all()  # cut rows used every token
    suppressed = set(sharp_model.generation_config.suppress_tokens)
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for g in gens.texts for t in g]
    assert not suppressed & {i for ids in encoded for i in ids}


def test_hf_only_generation_settings_fall_back_to_hf(make_model, tok):
    model = make_model(0)
    assert hf_only_settings(model.generation_config) == []
    model.generation_config.repetition_penalty = 1.3
    assert hf_only_settings(model.generation_config) == ["repetition_penalty"]
    cfg = dict(max_new_tokens=8)
    with pytest.warns(UserWarning, match="repetition_penalty"):
        ours = generate(model, tok, PROMPTS, 1, SamplingConfig(**cfg), greedy=True)
    hf = generate(model, tok, PROMPTS, 1, SamplingConfig(**cfg, sampler="hf"), greedy=True)
    assert ours.texts == hf.texts
