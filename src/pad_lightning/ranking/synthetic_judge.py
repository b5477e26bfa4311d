"""A synthetic MCQ judge of known accuracy: answers drawn from the true quality q of the options.

For each question (an option order of one prompt's responses, as `selection.questions_for`
lists them) whose options differ in q, independently:

1. with probability `position_bias` (drawn first) the judge answers "A", whatever the content;
2. otherwise, with probability `accuracy` it answers an option of highest q (uniformly among
   tied best options), and with probability 1 - accuracy a uniformly drawn option *not* of
   highest q.

So P(an option of highest q is answered) = position_bias * [A is one] + (1 - position_bias) *
accuracy; on two-option questions asked in both orders the mean is position_bias / 2 +
(1 - position_bias) * accuracy. The answer is expressed as option log-probabilities, as a model
judge's next-token distribution renormalised over the letters would be: the answered option gets
probability `confidence`, the other k - 1 share 1 - confidence equally. A question whose options
all have the same q (options of the same text among them) is answered uniformly, log(1 / k)
each, as `lm.judge` treats a question whose options are all the same text. log p_sel is then
formed from these log-probabilities by `selection.log_selection`, exactly as for a model judge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SyntheticJudge:
    """`accuracy` in [0.5, 1], `position_bias` in [0, 1], `confidence` in (0.5, 1) (the
    probability of the answered option; > 1/k makes it the judge's most likely letter)."""

    accuracy: float = 0.9
    position_bias: float = 0.0
    confidence: float = 0.95


def option_qualities(q: torch.Tensor, orders: list[tuple[int, ...]]) -> torch.Tensor:
    """q of every option of every question: [P, n] -> [P, Q, k] (option j of question o is
    response orders[o][j])."""
    return q[:, torch.tensor(orders, dtype=torch.long)]


def _uniform_among(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index drawn uniformly among the True entries of each row of `allowed` [..., k]
    (rows with none: an arbitrary index, never used): argmax of uniform keys outside the mask."""
    keys = torch.rand(allowed.shape, generator=generator, dtype=torch.float64)
    return keys.masked_fill(~allowed, -1.0).argmax(-1)


def draw_answers(
    q: torch.Tensor,
    orders: list[tuple[int, ...]],
    judge: SyntheticJudge,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(answered option [P, Q], graded [P, Q]) of the judge on the questions `orders` of each
    prompt's responses of quality `q` [P, n]; `graded` marks the questions whose options differ
    in q (the others are answered uniformly, and their drawn index means nothing).

    The random numbers are drawn for every question in a fixed order (position bias, then
    accuracy, then the best option, then the other option), so the answers are a function of
    the generator's state and the shapes alone."""
    options = option_qualities(q.double(), orders)  # [P, Q, k]
    best_q = options.max(-1, keepdim=True).values
    best = options == best_q
    graded = ~best.all(-1)
    shape = options.shape[:-1]
    biased = torch.rand(shape, generator=generator, dtype=torch.float64) < judge.position_bias
    right = torch.rand(shape, generator=generator, dtype=torch.float64) < judge.accuracy
    a_best = _uniform_among(best, generator)
    a_other = _uniform_among(~best, generator)
    answer = torch.where(right, a_best, a_other)
    answer = torch.where(biased, torch.zeros_like(answer), answer)
    return answer, graded


def option_log_probs(
    q: torch.Tensor,
    orders: list[tuple[int, ...]],
    judge: SyntheticJudge,
    generator: torch.Generator,
) -> torch.Tensor:
    """The judge's option log-probabilities [P, Q, k] (what `lm.judge.question_log_probs` reads
    from a model): log `confidence` for the answered option, log((1 - confidence) / (k - 1)) for
    each other, log(1 / k) for every option of a question whose options all have the same q."""
    answer, graded = draw_answers(q, orders, judge, generator)
    k = len(orders[0])
    other = math.log((1 - judge.confidence) / (k - 1))
    logp = torch.full((*answer.shape, k), other)
    logp.scatter_(-1, answer.unsqueeze(-1), math.log(judge.confidence))
    return torch.where(graded.unsqueeze(-1), logp, torch.full_like(logp, -math.log(k)))
