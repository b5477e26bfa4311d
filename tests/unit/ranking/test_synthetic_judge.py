"""The synthetic MCQ judge (pad_lightning.ranking.synthetic_judge): its realised accuracy and
position bias are the set ones, and its answers go through `log_selection` like a model's."""

from __future__ import annotations

import math

import pytest
import torch

from pad_lightning.ranking.selection import log_selection, questions_for
from pad_lightning.ranking.synthetic_judge import (
    SyntheticJudge,
    draw_answers,
    option_log_probs,
    option_qualities,
)


def _distinct_q(prompts: int, n: int, seed: int = 0) -> torch.Tensor:
    """Qualities with no ties within a prompt (a random permutation of n levels each)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(prompts)]).float() / n


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("accuracy", [0.55, 0.7, 0.85, 1.0])
@pytest.mark.parametrize(("mode", "n"), [("pairwise", 4), ("listwise", 5)])
def test_realised_accuracy_is_the_set_accuracy(accuracy, mode, n):
    """Over many graded questions, the share answered with an option of highest q matches
    `accuracy` within 4 binomial standard errors (exactly 1 at accuracy 1)."""
    orders = questions_for(mode, n, debias=True)
    q = _distinct_q(3000, n)
    answer, graded = draw_answers(q, orders, SyntheticJudge(accuracy, 0.0), _gen())
    options = option_qualities(q, orders)
    picked = options.gather(-1, answer.unsqueeze(-1)).squeeze(-1)
    right = (picked == options.max(-1).values)[graded].double()
    trials = right.numel()
    assert trials == 3000 * len(orders)  # distinct q: every question is graded
    se = math.sqrt(accuracy * (1 - accuracy) / trials)
    assert abs(float(right.mean()) - accuracy) <= 4 * se + 1e-12


def test_wrong_answers_are_uniform_over_the_other_options():
    """Accuracy 0.5 on 5-option questions: the best option half the time, each of the 4 others
    1/8 of the time (within 4 binomial standard errors)."""
    orders = questions_for("listwise", 5, debias=True)
    q = _distinct_q(4000, 5)
    answer, _ = draw_answers(q, orders, SyntheticJudge(0.5, 0.0), _gen(1))
    options = option_qualities(q, orders)
    rank = (options.unsqueeze(-1) < options.unsqueeze(-2)).sum(-1)  # 0 = best
    picked_rank = rank.gather(-1, answer.unsqueeze(-1)).squeeze(-1).flatten()
    freq = torch.bincount(picked_rank, minlength=5).double() / picked_rank.numel()
    expected = torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125], dtype=torch.float64)
    se = (expected * (1 - expected) / picked_rank.numel()).sqrt()
    assert ((freq - expected).abs() <= 4 * se).all(), freq


def test_ties_among_the_best_are_broken_uniformly():
    """Two options share the highest q: at accuracy 1 each is answered half the time, the third
    never."""
    q = torch.tensor([[0.9, 0.9, 0.1]]).expand(20000, 3)
    answer, graded = draw_answers(q, [(0, 1, 2)], SyntheticJudge(1.0, 0.0), _gen(2))
    assert graded.all()
    freq = torch.bincount(answer.flatten(), minlength=3).double() / answer.numel()
    assert freq[2] == 0 and abs(float(freq[0]) - 0.5) < 4 * math.sqrt(0.25 / answer.numel())


def test_position_bias_one_answers_a_always():
    orders = questions_for("pairwise", 4, debias=True)
    q = _distinct_q(200, 4)
    answer, graded = draw_answers(q, orders, SyntheticJudge(1.0, 1.0), _gen())
    assert graded.all() and (answer == 0).all()
    logp = option_log_probs(q, orders, SyntheticJudge(1.0, 1.0, 0.8), _gen())
    assert torch.allclose(logp[..., 0], torch.tensor(math.log(0.8)))


@pytest.mark.parametrize("bias", [0.3, 0.6])
def test_position_bias_is_drawn_first(bias):
    """P(A) = bias + (1 - bias) P(A | content): at accuracy 1 on pairs whose better option is
    "A" half the time, P(A) = bias + (1 - bias) / 2."""
    orders = questions_for("pairwise", 4, debias=True)
    q = _distinct_q(3000, 4)
    answer, _ = draw_answers(q, orders, SyntheticJudge(1.0, bias), _gen(3))
    expected = bias + (1 - bias) / 2
    se = math.sqrt(expected * (1 - expected) / answer.numel())
    assert abs(float((answer == 0).double().mean()) - expected) <= 4 * se


def test_accuracy_one_gives_the_q_ordering():
    """Accuracy 1, no position bias: pairwise (both orders) p_sel ranks the responses exactly
    as q does; listwise (rotations) puts the best response first, the others tied below."""
    q = _distinct_q(50, 6, seed=4)
    judge = SyntheticJudge(1.0, 0.0, 0.9)
    orders = questions_for("pairwise", 6, True)
    log_p = log_selection(option_log_probs(q, orders, judge, _gen()), orders, "pairwise", 6, True)
    assert torch.equal(log_p.argsort(-1), q.argsort(-1))
    orders = questions_for("listwise", 6, True)
    log_p = log_selection(option_log_probs(q, orders, judge, _gen()), orders, "listwise", 6, True)
    assert torch.equal(log_p.argmax(-1), q.argmax(-1))
    assert torch.allclose(log_p.max(-1).values, torch.tensor(math.log(0.9)))
    others = log_p.sort(-1).values[:, :-1]
    assert torch.allclose(others, torch.tensor(math.log(0.1 / 5)))


def test_debiased_pairwise_selection_matches_the_hand_computed_case():
    """n = 3, q = (0.2, 0.9, 0.5), confidence 0.8, each pair in both orders. Accuracy 1: the
    better response wins every question with 0.8, so W = 0.8 (better) / 0.2 (worse) and p_sel =
    (0.2, 0.8, 0.5) (the mean over the two others). A purely positional judge (bias 1): W[i, j]
    = (p_A(i, j) + p_B(j, i)) / 2 = (0.8 + 0.2) / 2 = 0.5, so p_sel = 1/2 for all: debiasing
    cancels it, as for a model judge."""
    q = torch.tensor([[0.2, 0.9, 0.5]])
    orders = questions_for("pairwise", 3, True)
    for judge, expected in (
        (SyntheticJudge(1.0, 0.0, 0.8), [0.2, 0.8, 0.5]),
        (SyntheticJudge(0.5, 1.0, 0.8), [0.5, 0.5, 0.5]),
    ):
        logp = option_log_probs(q, orders, judge, _gen())
        p_sel = log_selection(logp, orders, "pairwise", 3, True).exp()
        assert torch.allclose(p_sel, torch.tensor([expected]), atol=1e-6), judge
    # one order only (the paper code's scheme): the positional judge now favours the first index
    orders = questions_for("pairwise", 3, False)
    logp = option_log_probs(q, orders, SyntheticJudge(0.5, 1.0, 0.8), _gen())
    p_sel = log_selection(logp, orders, "pairwise", 3, False).exp()
    assert torch.allclose(p_sel, torch.tensor([[0.8, 0.5, 0.2]]), atol=1e-6)


def test_listwise_rotations_match_the_hand_computed_case():
    """n = 3 listed in 3 rotations, confidence 0.8: an accurate judge gives the best response
    0.8 and each other 0.1; a positional one gives each response 0.8 once and 0.1 twice:
    (0.8 + 0.1 + 0.1) / 3 = 1/3 each."""
    q = torch.tensor([[0.2, 0.9, 0.5]])
    orders = questions_for("listwise", 3, True)
    for judge, expected in (
        (SyntheticJudge(1.0, 0.0, 0.8), [0.1, 0.8, 0.1]),
        (SyntheticJudge(0.5, 1.0, 0.8), [1 / 3, 1 / 3, 1 / 3]),
    ):
        logp = option_log_probs(q, orders, judge, _gen())
        p_sel = log_selection(logp, orders, "listwise", 3, True).exp()
        assert torch.allclose(p_sel, torch.tensor([expected]), atol=1e-6), judge


def test_questions_whose_options_have_equal_q_are_uniform():
    q = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]])
    orders = questions_for("pairwise", 4, True)
    logp = option_log_probs(q, orders, SyntheticJudge(1.0, 1.0), _gen())
    assert torch.allclose(logp[0], torch.tensor(-math.log(2)))  # every pair ties
    ties = [o for o, (i, j) in enumerate(orders) if q[1, i] == q[1, j]]
    assert torch.allclose(logp[1, ties], torch.tensor(-math.log(2)))
    graded = [o for o in range(len(orders)) if o not in ties]
    assert torch.allclose(logp[1, graded, 0], torch.tensor(math.log(0.95)))  # bias 1: "A"


def test_option_log_probs_are_normalised_with_the_set_confidence():
    orders = questions_for("listwise", 4, True)
    logp = option_log_probs(_distinct_q(10, 4), orders, SyntheticJudge(0.7, 0.2, 0.6), _gen())
    assert torch.allclose(logp.exp().sum(-1), torch.ones(()))
    assert torch.allclose(logp.max(-1).values, torch.tensor(math.log(0.6)))


def test_same_generator_seed_same_answers():
    orders = questions_for("pairwise", 5, True)
    q = _distinct_q(100, 5)
    judge = SyntheticJudge(0.7, 0.2)
    a = option_log_probs(q, orders, judge, _gen(7))
    assert torch.equal(a, option_log_probs(q, orders, judge, _gen(7)))
    assert not torch.equal(a, option_log_probs(q, orders, judge, _gen(8)))
