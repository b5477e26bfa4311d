"""Measuring a pairwise judge (pad_lightning.ranking.judge_accuracy): against brute-force loops
over the pairs, known Wilson intervals, and the values of a positional and a perfect judge."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pad_lightning.ranking.judge_accuracy import (
    Rate,
    graded_accuracy,
    order_agreement,
    preference_signs,
    wilson,
)
from pad_lightning.ranking.selection import pairwise_questions


def test_wilson_known_values():
    """8 of 10: (0.4902, 0.9433) (Wilson 1927; e.g. Newcombe 1998, table I); 0 of 10:
    (0, 0.2775); no trials: (0, 1)."""
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson(0, 10)
    assert low == 0 and round(high, 4) == 0.2775
    assert wilson(10, 10)[1] == 1 and wilson(48, 48)[0] < 1
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_is_symmetric_and_narrows_with_trials():
    low, high = wilson(30, 100)
    low2, high2 = wilson(70, 100)
    assert math.isclose(low, 1 - high2) and math.isclose(high, 1 - low2)
    assert wilson(300, 1000)[1] - wilson(300, 1000)[0] < high - low


def test_rate_excludes_only_when_the_whole_interval_is_above():
    assert Rate(90, 100).excludes(0.5)
    assert not Rate(55, 100).excludes(0.5)  # [0.452, 0.643]
    assert not Rate(10, 100).excludes(0.5)  # below chance: not better than it
    assert not Rate(0, 0).excludes(0.5)
    assert math.isnan(Rate(0, 0).value)


def _brute(option_logp, texts, q, gap):
    """Agreement and accuracy by a loop over every pair and both of its questions."""
    n = len(texts[0])
    index = {pair: k for k, pair in enumerate(pairwise_questions(n, True))}
    agree = stated = 0
    score, graded = 0.0, 0
    for p, group in enumerate(texts):
        for i, j in itertools.combinations(range(n), 2):
            a_ij, b_ij = option_logp[p, index[i, j]].tolist()
            a_ji, b_ji = option_logp[p, index[j, i]].tolist()
            # which response the judge answers in each order (None: a tie)
            first = i if a_ij > b_ij else j if b_ij > a_ij else None
            second = j if a_ji > b_ji else i if b_ji > a_ji else None
            if group[i] != group[j] and first is not None and second is not None:
                stated += 1
                agree += first == second
            dq = float(q[p, i] - q[p, j])
            if dq != 0 and abs(dq) >= gap:
                graded += 1
                better = i if dq > 0 else j
                for pick in (first, second):  # a tie counts 1/2; the two orders are averaged
                    score += (0.5 if pick is None else float(pick == better)) / 2
    return agree, stated, score, graded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_and_accuracy_match_a_brute_force_loop(seed):
    g = torch.Generator().manual_seed(seed)
    prompts, n = 40, 5
    questions = len(pairwise_questions(n, True))
    # coarse log-probs so that ties happen; some groups repeat a text
    option_logp = torch.randint(0, 3, (prompts, questions, 2), generator=g).float()
    texts = [[str(int(t)) for t in torch.randint(0, 4, (n,), generator=g)] for _ in range(prompts)]
    q = torch.randint(0, 6, (prompts, n), generator=g).float() / 5
    signs = preference_signs(option_logp, n)
    different = torch.tensor([[[a != b for b in grp] for a in grp] for grp in texts])
    agreement = order_agreement(signs, different)
    accuracy = graded_accuracy(signs, q, gap=0.35)
    agree, stated, score, graded = _brute(option_logp, texts, q, gap=0.35)
    assert (agreement.successes, agreement.trials) == (agree, stated)
    assert accuracy.trials == graded and math.isclose(accuracy.successes, score)


def _answers(n: int, pick) -> torch.Tensor:
    """Option log-probs [1, n (n - 1), 2] of a judge that answers `pick(i, j)` in {0, 1} when
    asked (i, j) with confidence 0.9."""
    rows = []
    for i, j in pairwise_questions(n, True):
        a = pick(i, j)
        rows.append([math.log(0.9), math.log(0.1)] if a == 0 else [math.log(0.1), math.log(0.9)])
    return torch.tensor([rows])


def test_a_positional_judge_never_agrees_and_scores_one_half():
    n = 4
    q = torch.tensor([[0.1, 0.4, 0.7, 1.0]])
    signs = preference_signs(_answers(n, lambda i, j: 0), n)  # always "A"
    different = ~torch.eye(n, dtype=torch.bool).unsqueeze(0)
    assert order_agreement(signs, different) == Rate(0.0, 6)
    accuracy = graded_accuracy(signs, q, gap=0.2)
    assert accuracy == Rate(3.0, 6) and accuracy.value == 0.5


def test_a_judge_of_q_agrees_always_and_is_always_right():
    n = 4
    q = torch.tensor([[0.1, 0.4, 0.7, 1.0]])
    signs = preference_signs(_answers(n, lambda i, j: 0 if q[0, i] > q[0, j] else 1), n)
    different = ~torch.eye(n, dtype=torch.bool).unsqueeze(0)
    assert order_agreement(signs, different) == Rate(6.0, 6)
    assert graded_accuracy(signs, q, gap=0.2) == Rate(6.0, 6)
    assert graded_accuracy(signs, q, gap=0.5) == Rate(3.0, 3)  # |dq| >= 0.5: 3 pairs
    reversed_judge = preference_signs(_answers(n, lambda i, j: 1 if q[0, i] > q[0, j] else 0), n)
    assert graded_accuracy(reversed_judge, q, gap=0.2) == Rate(0.0, 6)


def test_pairs_of_the_same_text_do_not_count_for_agreement():
    n = 3
    texts = [["x", "x", "y"]]
    signs = preference_signs(_answers(n, lambda i, j: 0 if i < j else 1), n)
    different = torch.tensor([[[a != b for b in g] for a in g] for g in texts])
    assert order_agreement(signs, different).trials == 2
