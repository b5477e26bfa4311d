"""How good a pairwise MCQ judge is: order agreement and accuracy on graded pairs, with intervals.

The judge is asked every pair of a prompt's n responses in both orders (the questions of
`selection.pairwise_questions(n, debias=True)`), and its answer to a question is the option of
higher log-probability (equal: no preference). For an unordered pair {i, j} let s_ij = +1 if the
judge answers y_i when asked (i, j) (y_i as "A"), -1 if it answers y_j, 0 on a tie.

* Order agreement (needs no labels): over the pairs of different texts where the judge states a
  preference in both orders, the fraction where it prefers the same response in both, i.e.
  s_ij = -s_ji. A judge that reads content agrees often; one that answers by position (always
  "A") never does; a judge that answers at random agrees half the time.
* Accuracy (needs the true quality q): over the graded pairs, |q_i - q_j| >= gap, the fraction
  of the two orders in which the judge answers the better response (a tie counts 1/2). Each pair
  scores (2 + d (s_ij - s_ji)) / 4 in {0, 1/4, 1/2, 3/4, 1}, d = sign(q_i - q_j); a purely
  positional judge scores 1/2 on every pair.

Both come with a Wilson score interval treating each pair as one trial (successes: the sum of
the pair scores). For accuracy a pair's score lies in [0, 1], so its variance is at most that of
a Bernoulli trial of the same mean: the interval is at least as wide as the pair-level one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pad_lightning.ranking.selection import pairwise_questions

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Rate:
    """`successes` (a sum of per-pair scores in [0, 1]) out of `trials` pairs."""

    successes: float
    trials: int

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """The Wilson score interval: (p + z^2/2m -+ z sqrt(p(1-p)/m + z^2/4m^2)) / (1 + z^2/m),
        m = trials; (0, 1) when nothing was measured."""
        return wilson(self.successes, self.trials, z)

    def excludes(self, value: float, z: float = Z95) -> bool:
        """Whether the whole interval lies above `value` (the judge beats it)."""
        return self.trials > 0 and self.interval(z)[0] > value


def wilson(successes: float, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate `successes / trials`; (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / trials + z2 / (4 * trials * trials))
    scale = 1 + z2 / trials
    low = 0.0 if p <= 0 else max(0.0, (centre - half) / scale)  # exact at the ends (no 1e-18)
    high = 1.0 if p >= 1 else min(1.0, (centre + half) / scale)
    return low, high


def preference_signs(option_logp: torch.Tensor, n: int) -> torch.Tensor:
    """S [P, n, n] from the option log-probabilities [P, n (n - 1), 2] of the pairwise
    questions in both orders (`pairwise_questions(n, True)`): S[p, i, j] = +1 if, asked (i, j),
    the judge answers y_i, -1 if y_j, 0 on a tie; the diagonal is 0."""
    questions = pairwise_questions(n, True)
    first = torch.tensor([i for i, _ in questions])
    second = torch.tensor([j for _, j in questions])
    signs = torch.sign(option_logp[..., 0] - option_logp[..., 1])
    out = option_logp.new_zeros((option_logp.shape[0], n, n))
    out[:, first, second] = signs
    return out


def order_agreement(signs: torch.Tensor, different: torch.Tensor) -> Rate:
    """Agreement of the judge with itself across the two orders, over the pairs i < j whose
    texts differ (`different` [P, n, n]) and where it states a preference in both orders."""
    upper = torch.ones(signs.shape[-2:], dtype=torch.bool).triu(1)
    stated = (signs != 0) & (signs.transpose(-1, -2) != 0) & different & upper
    agree = stated & (signs == -signs.transpose(-1, -2))
    return Rate(float(agree.sum()), int(stated.sum()))


def graded_accuracy(signs: torch.Tensor, q: torch.Tensor, gap: float) -> Rate:
    """Accuracy against q [P, n] on the pairs i < j with |q_i - q_j| >= gap, both orders
    averaged: each pair scores (2 + sign(q_i - q_j) (S_ij - S_ji)) / 4."""
    diff = q.unsqueeze(-1) - q.unsqueeze(-2)  # [P, n, n]: q_i - q_j
    upper = torch.ones(signs.shape[-2:], dtype=torch.bool).triu(1)
    graded = (diff.abs() >= gap) & (diff != 0) & upper
    score = (2 + torch.sign(diff) * (signs - signs.transpose(-1, -2))) / 4
    return Rate(float(score[graded].sum()), int(graded.sum()))
