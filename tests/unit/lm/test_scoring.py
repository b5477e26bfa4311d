"""Tests for length-normalised sequence rewards (pad_lightning.lm.scoring)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import FullLogits

from pad_lightning.lm.chat import EncodedPair, encode_pairs
from pad_lightning.lm.scoring import (
    length_normalised,
    pad_pairs,
    score_pairs,
    sequence_rewards,
    token_budget_chunks,
    token_log_probs,
)

PROMPTS = ["rev abc", "sort 3 1 2 9 4", "123+456="]
RESPONSES = [["cba", "", "abcabc"], ["1 2 3 4 9", "9"], ["975", "579 "]]


def _pairs(tok) -> list[EncodedPair]:
    return encode_pairs(tok, PROMPTS, RESPONSES)


@torch.no_grad()
def _manual_reward(model, pair: EncodedPair) -> float:
    """Mean log pi(y_t | y_<t) over the scored span of one unpadded sequence."""
    ids = torch.tensor([pair.ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    terms = [logp[t - 1, pair.ids[t]].item() for t in range(pair.prompt_len, len(pair.ids))]
    return sum(terms) / len(terms)


def test_pad_pairs_layout(tok):
    pairs = _pairs(tok)
    batch = pad_pairs(pairs, tok.pad_token_id)
    width = max(len(p.ids) for p in pairs)
    assert batch.input_ids.shape == (len(pairs), width)
    for i, p in enumerate(pairs):
        assert batch.input_ids[i, : len(p.ids)].tolist() == p.ids
        assert (batch.input_ids[i, len(p.ids) :] == tok.pad_token_id).all()
        assert batch.attention_mask[i].sum() == len(p.ids)
        assert batch.score_mask[i].nonzero().flatten().tolist() == list(
            range(p.prompt_len, len(p.ids))
        )


def test_sequence_rewards_match_manual(tok, model):
    pairs = _pairs(tok)
    with torch.no_grad():
        got = sequence_rewards(model, pad_pairs(pairs, tok.pad_token_id))
    expected = torch.tensor([_manual_reward(model, p) for p in pairs], dtype=got.dtype)
    assert got.shape == (len(pairs),)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got < 0).all()


def test_token_log_probs_zero_outside_scored_span(tok, model):
    batch = pad_pairs(_pairs(tok), tok.pad_token_id)
    with torch.no_grad():
        logp = token_log_probs(model, batch)
    assert logp.shape == batch.input_ids.shape
    assert (logp[~batch.score_mask] == 0).all()
    assert (logp[batch.score_mask] < 0).all()


def test_padding_invariance(tok, model):
    short = encode_pairs(tok, ["rev ab"], [["ba"]])[0]
    long = encode_pairs(tok, ["rev " + "abcdefghij" * 6], [["jihgfedcba" * 6]])[0]
    assert len(long.ids) > 4 * len(short.ids)
    with torch.no_grad():
        alone = sequence_rewards(model, pad_pairs([short], tok.pad_token_id))
        batched = sequence_rewards(model, pad_pairs([long, short, long], tok.pad_token_id))
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], batched[2], atol=1e-6, rtol=0)


def test_score_pairs_chunking_equals_one_batch(tok, model):
    pairs = _pairs(tok) + encode_pairs(tok, ["rev " + "abc" * 10], [["cba" * 10, "x"]])
    lengths = [len(p.ids) for p in pairs]
    full = score_pairs(model, pairs, tok.pad_token_id, max_tokens=10**6)
    assert len(token_budget_chunks(lengths, 10**6)) == 1
    for budget in (1, 40, 3 * max(lengths)):
        chunked = score_pairs(model, pairs, tok.pad_token_id, max_tokens=budget)
        assert len(token_budget_chunks(lengths, budget)) > 1
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    with torch.no_grad():
        direct = sequence_rewards(model, pad_pairs(pairs, tok.pad_token_id))
    torch.testing.assert_close(full, direct, atol=1e-5, rtol=0)


def test_token_budget_chunks_cover_and_respect_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 30))]
        budget = rng.randint(1, 400)
        chunks = token_budget_chunks(lengths, budget)
        flat = sorted(i for c in chunks for i in c)
        assert flat == list(range(len(lengths)))  # every index exactly once
        for chunk in chunks:
            assert chunk
            padded = max(lengths[i] for i in chunk) * len(chunk)
            assert padded <= budget or len(chunk) == 1
    assert token_budget_chunks([], 10) == []
    assert token_budget_chunks([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]


def test_gradients_flow(tok, make_model):
    m = make_model(seed=3).train()
    batch = pad_pairs(_pairs(tok), tok.pad_token_id)
    rewards = sequence_rewards(m, batch)
    assert rewards.requires_grad
    rewards.mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # one step of gradient ascent on the reward increases it
    with torch.no_grad():
        for p in m.parameters():
            p.add_(p.grad, alpha=0.5)
        after = sequence_rewards(m, batch)
    assert after.mean() > rewards.mean()


def test_lm_head_skipped_on_prompt_positions(tok, model):
    from pad_lightning.lm.scoring import response_logits

    batch = pad_pairs(_pairs(tok), tok.pad_token_id)
    shortest_prompt = min(p.prompt_len for p in _pairs(tok))
    with torch.no_grad():
        logits, first = response_logits(model, batch)
        full, first_full = response_logits(FullLogits(model), batch)
        reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert first == first_full == shortest_prompt - 1
    assert logits.shape[1] == batch.input_ids.shape[1] - first  # fewer LM-head rows
    torch.testing.assert_close(logits, reference[:, first:], atol=1e-5, rtol=0)
    torch.testing.assert_close(full, reference[:, first:])
    with torch.no_grad():
        torch.testing.assert_close(
            token_log_probs(model, batch), token_log_probs(FullLogits(model), batch)
        )


def test_a_row_without_scored_tokens_is_an_error_not_the_best_reward(tok, model):
    """The mean over no token used to be 0.0, the best possible reward (an empty response won)."""
    logp = torch.tensor([[0.0, -1.0, -3.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\] have no scored token"):
        length_normalised(logp, mask)
    torch.testing.assert_close(length_normalised(logp[:1], mask[:1]), torch.tensor([-2.0]))
    (pair,) = encode_pairs(tok, ["rev abc"], [["cba"]])
    empty = EncodedPair(pair.ids[: pair.prompt_len], pair.prompt_len)  # prompt only
    with pytest.raises(ValueError, match=r"rows \[1\] have no scored token"):
        sequence_rewards(model, pad_pairs([pair, empty], tok.pad_token_id))
    with pytest.raises(ValueError, match="no scored token"):
        score_pairs(model, [pair, empty], tok.pad_token_id)


def test_chunked_lm_head_equals_the_full_one(tok, make_model, monkeypatch):
    """Above LOGIT_BUDGET the LM head runs on chunks of scored positions: the same log-probs and
    the same gradients (each chunk recomputed in backward), while a model whose logits are
    post-processed after the head keeps the full forward."""
    from pad_lightning.lm import scoring as rewards
    from pad_lightning.lm.scoring import split_head, token_log_probs

    batch = pad_pairs(_pairs(tok), tok.pad_token_id)
    full_model, chunked_model = make_model(0), make_model(0)
    full = token_log_probs(full_model, batch)
    full.sum().backward()
    vocab = full_model.config.vocab_size
    monkeypatch.setattr(rewards, "LOGIT_BUDGET", 3 * vocab)  # chunks of 3 positions
    assert split_head(chunked_model, batch) is not None
    calls = []
    real = rewards._picked_log_probs
    monkeypatch.setattr(rewards, "_picked_log_probs", lambda *a: calls.append(1) or real(*a))
    chunked = token_log_probs(chunked_model, batch)
    scored = int(batch.score_mask[:, 1:].sum())
    assert len(calls) == -(-scored // 3) > 1
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    chunked.sum().backward()
    for (name, a), b in zip(full_model.named_parameters(), chunked_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)

    class Capped(type(full_model)):  # logits soft-capped after the head (as Gemma 2 does)
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 5 * torch.tanh(out.logits / 5)
            return out

    capped = make_model(0)
    capped.__class__ = Capped
    assert split_head(capped, batch) is None
    with torch.no_grad():
        expected = torch.nn.functional.log_softmax(capped(batch.input_ids).logits, -1)
    got = token_log_probs(capped, batch)
    row, t = batch.score_mask.nonzero()[0].tolist()
    torch.testing.assert_close(
        got[row, t], expected[row, t - 1, batch.input_ids[row, t]], rtol=1e-5, atol=1e-5
    )
