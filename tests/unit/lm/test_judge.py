"""Tests for MCQ calibration of teacher rewards (pad_lightning.lm.judge)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import FullLogits

from pad_lightning.lm.chat import encode_prompt
from pad_lightning.lm.judge import (
    DEFAULT_TEMPLATE,
    mcq_prompt,
    option_log_probs,
    option_token_ids,
    selection_log_probs,
)
from pad_lightning.ranking.selection import (
    listwise_orders,
    log_win_matrix,
    mix,
    pairwise_questions,
    win_matrix,
)


class FakeLM(torch.nn.Module):
    """A stand-in causal LM: fixed logits on the letters A/B and on one distractor token.

    `logit_a(prefix_sum)` gives the logit of "A" at each position from the running sum of the
    token ids so far, so the fake is causal and unaffected by right padding.
    """

    def __init__(self, tok, logit_a, distractor_logit: float = 0.0):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.vocab = len(tok)
        self.a, self.b = option_token_ids(tok, 2)
        self.distractor = tok.convert_tokens_to_ids("Z")
        self.logit_a = logit_a
        self.distractor_logit = distractor_logit
        self.rows_seen = 0

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.rows_seen += input_ids.shape[0]
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        logits[..., self.a] = self.logit_a(input_ids.double().cumsum(-1)).float()
        logits[..., self.distractor] = self.distractor_logit
        return SimpleNamespace(logits=logits)


def _content_logit(prefix_sum: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.sin(0.37 * prefix_sum)


def test_mcq_prompt_format():
    assert mcq_prompt("rev abc", ["cba", "abc"]) == "Q: rev abc\nA) cba\nB) abc\nBest:"
    assert mcq_prompt("q", ["x", "y", "z"]) == "Q: q\nA) x\nB) y\nC) z\nBest:"
    assert mcq_prompt("q", ["x", "y"], "{options}|{question}") == "A) x\nB) y|q"
    assert DEFAULT_TEMPLATE.count("{question}") == 1


def test_option_token_ids_distinct(tok):
    ids = option_token_ids(tok, 4)
    assert len(set(ids)) == 4
    assert [tok.decode([i]) for i in ids] == ["A", "B", "C", "D"]


def test_pairwise_questions():
    assert pairwise_questions(3, debias=False) == [(0, 1), (0, 2), (1, 2)]
    assert sorted(pairwise_questions(3, debias=True)) == sorted(itertools.permutations(range(3), 2))


def test_win_matrix_debiased_hand_formula():
    n = 4
    questions = pairwise_questions(n, debias=True)
    p_first = torch.rand(2, len(questions), generator=torch.Generator().manual_seed(0))
    w = win_matrix(p_first, questions, n, debias=True)
    assert w.shape == (2, n, n)
    pa = {q: p_first[:, k] for k, q in enumerate(questions)}
    for i in range(n):
        assert (w[:, i, i] == 0).all()
        for j in range(n):
            if i != j:
                torch.testing.assert_close(w[:, i, j], (pa[i, j] + 1 - pa[j, i]) / 2)
                torch.testing.assert_close(w[:, i, j] + w[:, j, i], torch.ones(2))


def test_win_matrix_single_order():
    n = 3
    questions = pairwise_questions(n, debias=False)
    p_first = torch.tensor([0.9, 0.3, 0.6])
    w = win_matrix(p_first, questions, n, debias=False)
    expected = torch.tensor([[0.0, 0.9, 0.3], [0.1, 0.0, 0.6], [0.7, 0.4, 0.0]])
    torch.testing.assert_close(w, expected)


def test_debias_removes_position_bias(tok):
    fake = FakeLM(tok, lambda s: torch.full_like(s, 1.5))  # always prefers option A
    questions = ["rev abc", "sort 2 1"]
    responses = [["cba", "abc", "bca", "xyz"], ["1 2", "2 1", "12", "1"]]
    logp, _ = selection_log_probs(fake, tok, questions, responses, "pairwise", True)
    assert logp.shape == (2, 4)
    torch.testing.assert_close(logp.exp(), torch.full((2, 4), 0.5))

    logp, _ = selection_log_probs(fake, tok, questions, responses, "pairwise", False)
    p_a = 1 / (1 + math.exp(-1.5))
    p_sel = logp.exp()
    # response k is first in the (n-1-k) pairs with later responses: mean win (n-1-k)pA+k(1-pA)
    expected = torch.tensor([((3 - k) * p_a + k * (1 - p_a)) / 3 for k in range(4)])
    torch.testing.assert_close(p_sel, expected.expand(2, 4))
    assert (p_sel[:, :-1] > p_sel[:, 1:]).all()  # first-listed responses favoured


def test_option_probabilities_renormalised(tok):
    # most of the mass on a non-option token: still p(A) + p(B) = 1 after renormalising
    fake = FakeLM(tok, lambda s: torch.full_like(s, 0.7), distractor_logit=12.0)
    prompts = [encode_prompt(tok, mcq_prompt("q", ["x", "y"])), [5, 6, 7]]
    logp = option_log_probs(fake, prompts, option_token_ids(tok, 2), tok.pad_token_id)
    assert logp.shape == (2, 2)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2))
    torch.testing.assert_close(logp[:, 0].exp(), torch.full((2,), 1 / (1 + math.exp(-0.7))))


def test_option_log_probs_reads_last_real_token(tok):
    fake = FakeLM(tok, _content_logit)
    prompts = [[10, 20, 30], [10, 20, 30, 40, 50, 60, 70]]
    ids = option_token_ids(tok, 2)
    batched = option_log_probs(fake, prompts, ids, tok.pad_token_id, max_tokens=10**6)
    for k, p in enumerate(prompts):
        expected_pa = torch.sigmoid(
            _content_logit(torch.tensor(float(sum(p)), dtype=torch.float64))
        )
        torch.testing.assert_close(batched[k, 0].exp(), expected_pa.float())
    chunked = option_log_probs(fake, prompts, ids, tok.pad_token_id, max_tokens=1)
    torch.testing.assert_close(chunked, batched)


@pytest.mark.parametrize("debias", [True, False])
def test_pairwise_selection_matches_reference(tok, debias):
    """Whole procedure against a hand implementation; identical texts are not asked (1/2)."""
    fake = FakeLM(tok, _content_logit, distractor_logit=3.0)
    questions = ["rev abc", "sort 3 1"]
    responses = [["cba", "cba", "abc"], ["1 3", "3 1", "13"]]
    n = 3
    logp, n_tokens = selection_log_probs(fake, tok, questions, responses, "pairwise", debias)

    expected, tokens = torch.zeros(2, n), 0
    for p, (q, group) in enumerate(zip(questions, responses, strict=True)):
        pa = {}
        for i, j in itertools.permutations(range(n), 2):
            if group[i] == group[j] or (not debias and i > j):
                continue
            ids = encode_prompt(tok, mcq_prompt(q, [group[i], group[j]]))
            tokens += len(ids)
            pa[i, j] = torch.sigmoid(
                _content_logit(torch.tensor(float(sum(ids)), dtype=torch.float64))
            ).item()
        for i in range(n):
            wins = []
            for j in range(n):
                if i == j:
                    continue
                if group[i] == group[j]:
                    wins.append(0.5)
                elif debias:
                    wins.append((pa[i, j] + 1 - pa[j, i]) / 2)
                else:
                    wins.append(pa[i, j] if i < j else 1 - pa[j, i])
            expected[p, i] = math.log(sum(wins) / (n - 1))
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)
    assert n_tokens == tokens


def test_identical_responses_not_asked(tok):
    fake = FakeLM(tok, _content_logit)
    same = [["ab", "ab", "cd"]]
    different = [["ab", "ba", "cd"]]  # same lengths, all distinct
    _, tokens_same = selection_log_probs(fake, tok, ["q"], same, "pairwise", True)
    rows_same = fake.rows_seen
    fake.rows_seen = 0
    _, tokens_diff = selection_log_probs(fake, tok, ["q"], different, "pairwise", True)
    assert fake.rows_seen == 6 and rows_same == 4
    per_question = len(encode_prompt(tok, mcq_prompt("q", ["ab", "cd"])))
    assert tokens_diff - tokens_same == 2 * per_question

    # all identical: nothing asked, every win probability is exactly 1/2
    fake.rows_seen = 0
    logp, tokens = selection_log_probs(fake, tok, ["q"], [["x"] * 4], "pairwise", True)
    assert tokens == 0 and fake.rows_seen == 0
    torch.testing.assert_close(logp, torch.full((1, 4), math.log(0.5)))


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
@pytest.mark.parametrize("debias", [True, False])
def test_identical_options_not_asked_with_or_without_debias(tok, mode, debias):
    # the README promises it for every mode; one-order questions used to be asked anyway
    k = 2 if mode == "pairwise" else 3
    fake = FakeListLM(tok, k, lambda s, c: 2.0 * torch.sin(0.37 * s + 1.3 * c))
    fake.rows_seen = 0
    forward = fake.forward

    def counting(input_ids, **kwargs):
        fake.rows_seen += input_ids.shape[0]
        return forward(input_ids, **kwargs)

    fake.forward = counting
    groups = [["ab", "ab", "ab"], ["ab", "ab", "cd"]]  # all the same; one pair the same
    logp, tokens = selection_log_probs(fake, tok, ["q", "q"], groups, mode, debias)
    orders = (pairwise_questions if mode == "pairwise" else listwise_orders)(3, debias)
    asked = [
        (p, order)
        for p, group in enumerate(groups)
        for order in orders
        if len({group[i] for i in order}) > 1
    ]
    assert fake.rows_seen == len(asked) and len(asked) < 2 * len(orders)
    assert tokens == sum(
        len(encode_prompt(tok, mcq_prompt("q", [groups[p][i] for i in order])))
        for p, order in asked
    )
    # the all-identical group is exactly uniform whatever the judge's position bias: every
    # pair a tie (1/2), every list 1/3
    uniform = 1 / 2 if mode == "pairwise" else 1 / 3
    torch.testing.assert_close(logp[0], torch.full((3,), math.log(uniform)))
    if mode == "pairwise":  # y_0 vs y_1 are the same text: each wins 1/2 of that pair
        assert not any(p == 1 and set(order) == {0, 1} for p, order in asked)


@pytest.mark.parametrize("debias", [True, False])
def test_confident_judge_keeps_tiny_probabilities(tok, debias):
    # p(B) = sigmoid(-20) ~ 2e-9: 1 - p(A) is 0 in float32 (log p_sel was log 1e-12 = -27.6)
    fake = FakeLM(tok, lambda s: torch.full_like(s, 20.0))
    responses = [["cba", "abc", "bca"]]
    logp, _ = selection_log_probs(fake, tok, ["rev abc"], responses, "pairwise", debias)
    p_a = torch.sigmoid(torch.tensor(20.0, dtype=torch.float64))
    p_b = torch.sigmoid(torch.tensor(-20.0, dtype=torch.float64))
    if debias:  # a purely positional judge: every win probability is (p_A + p_B) / 2
        expected = torch.full((3,), ((p_a + p_b) / 2).log().item(), dtype=torch.float64)
    else:  # lower index is "A": y_0 wins both, y_1 loses to y_0, y_2 loses both
        expected = torch.stack([p_a, (p_b + p_a) / 2, p_b]).log()
    assert (logp[0].double() - expected).abs().max() < 1e-3
    if not debias:
        assert abs(logp[0, 2].item() - math.log(2.0611536e-9)) < 1e-3  # about -20.0

    # listwise: the letters after the first get ~2e-9 each
    fake = FakeListLM(tok, 3, lambda s, c: torch.full_like(s, 20.0 if c == 0 else 0.0))
    logp, _ = selection_log_probs(fake, tok, ["rev abc"], responses, "listwise", False)
    tiny = math.exp(-20) / (1 + 2 * math.exp(-20))
    expected = torch.tensor([math.log1p(-2 * tiny), math.log(tiny), math.log(tiny)])
    assert (logp[0].double() - expected.double()).abs().max() < 1e-3


def test_log_win_matrix_matches_win_matrix():
    n = 4
    for debias in (True, False):
        questions = pairwise_questions(n, debias)
        logits = torch.randn(2, len(questions), 2, generator=torch.Generator().manual_seed(1))
        logp = logits.log_softmax(-1)
        w = win_matrix(logp[..., 0].exp(), questions, n, debias, p_second=logp[..., 1].exp())
        torch.testing.assert_close(log_win_matrix(logp, questions, n, debias).exp(), w)


def test_mix_formula():
    r = torch.tensor([[-1.0, -2.0, -0.5]])
    s = torch.tensor([[-0.3, -1.2, -0.9]])
    torch.testing.assert_close(mix(r, s, 0.0), r)
    torch.testing.assert_close(mix(r, s, 1.0), s)
    torch.testing.assert_close(mix(r, s, 0.8), 0.2 * r + 0.8 * s)


class FakeListLM(torch.nn.Module):
    """Fake judge over k option letters: logit of letter c = `letter_logit(prefix_sum, c)`."""

    def __init__(self, tok, k, letter_logit):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.ids, self.letter_logit = len(tok), option_token_ids(tok, k), letter_logit

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        prefix = input_ids.double().cumsum(-1)
        for c, i in enumerate(self.ids):
            logits[..., i] = self.letter_logit(prefix, c).float()
        return SimpleNamespace(logits=logits)


def test_listwise_orders():
    assert listwise_orders(3, debias=False) == [(0, 1, 2)]
    assert listwise_orders(3, debias=True) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    orders = listwise_orders(5, debias=True)
    for position in range(5):  # every response in every position exactly once
        assert sorted(o[position] for o in orders) == list(range(5))


def test_listwise_rotation_removes_position_bias(tok):
    bias = [2.0, 1.0, 0.5, 0.0]  # a judge that only looks at positions
    fake = FakeListLM(tok, 4, lambda s, c: torch.full_like(s, bias[c]))
    responses = [["cba", "abc", "bca", "xyz"], ["1 2", "2 1", "12", "1"]]
    logp, _ = selection_log_probs(fake, tok, ["rev abc", "q"], responses, "listwise", True)
    torch.testing.assert_close(logp.exp(), torch.full((2, 4), 0.25))
    logp, _ = selection_log_probs(fake, tok, ["rev abc", "q"], responses, "listwise", False)
    torch.testing.assert_close(logp.exp(), torch.softmax(torch.tensor(bias), 0).expand(2, 4))


@pytest.mark.parametrize("debias", [True, False])
def test_listwise_selection_matches_reference(tok, debias):
    """Whole procedure against a hand implementation (float64), tokens counted."""

    def letter_logit(prefix_sum, c):
        return 2.0 * torch.sin(0.37 * prefix_sum + 1.3 * c)

    fake = FakeListLM(tok, 3, letter_logit)
    questions = ["rev abc", "sort 3 1"]
    responses = [["cba", "cba", "abc"], ["1 3", "3 1", "13"]]
    logp, n_tokens = selection_log_probs(
        fake, tok, questions, responses, "listwise", debias, max_tokens=40
    )
    expected, tokens = torch.zeros(2, 3, dtype=torch.float64), 0
    rotations = range(3) if debias else range(1)
    for p, (q, group) in enumerate(zip(questions, responses, strict=True)):
        for r in rotations:
            order = [(i + r) % 3 for i in range(3)]
            ids = encode_prompt(tok, mcq_prompt(q, [group[i] for i in order]))
            tokens += len(ids)
            total = torch.tensor(float(sum(ids)), dtype=torch.float64)
            probs = torch.softmax(torch.stack([letter_logit(total, c) for c in range(3)]), 0)
            for c, i in enumerate(order):
                expected[p, i] += probs[c] / len(rotations)
    torch.testing.assert_close(logp, expected.log().float(), atol=1e-5, rtol=0)
    assert n_tokens == tokens


def test_calibration_token_cost_vs_paper_scheme(tok):
    """Debiased listwise at n = 8 costs about the paper's one-order C(n, 2) pairs in tokens."""
    fake = FakeListLM(tok, 8, lambda s, c: torch.zeros_like(s))
    responses = [[f"{chr(97 + i)}{'xyz' * (i % 3)}" for i in range(8)]]
    costs = {}
    for mode, debias in (("pairwise", False), ("pairwise", True), ("listwise", True)):
        costs[mode, debias] = selection_log_probs(fake, tok, ["q"], responses, mode, debias)[1]
    reference = costs["pairwise", False]
    assert costs["pairwise", True] == 2 * reference
    assert costs["listwise", True] <= 1.5 * reference


def test_option_letters_read_in_context_for_word_start_tokenizers():
    # SentencePiece-style tokenizers write a lone letter as "▁" + letter: read alone, C and D
    # share their first token; after the rendered MCQ prompt each letter is its own token
    from tiny_models import make_tokenizer

    from pad_lightning.lm.chat import prompt_text

    tok = make_tokenizer("metaspace")
    with pytest.raises(ValueError, match="non-distinct"):
        option_token_ids(tok, 4)
    context = prompt_text(tok, mcq_prompt("rev abc", ["cba", "abc", "bca", "cab"]))
    ids = option_token_ids(tok, 4, context)
    assert len(set(ids)) == 4
    for letter, i in zip("ABCD", ids, strict=True):
        joint = tok(context + letter, add_special_tokens=False)["input_ids"]
        assert joint[-1] == i and tok.decode([i]).strip() == letter


def test_option_log_probs_lm_head_on_last_positions_only(tok, model):
    # a real HF model takes logits_to_keep: same answer as reading full logits
    prompts = [
        encode_prompt(tok, mcq_prompt(q, ["cba", "abc", "bac"]))
        for q in ("rev abc", "rev abcdef", "rev a", "rev ab")
    ]
    ids = option_token_ids(tok, 3)
    with torch.no_grad():
        kept = option_log_probs(model, prompts, ids, tok.pad_token_id)
        full = option_log_probs(FullLogits(model), prompts, ids, tok.pad_token_id)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)
