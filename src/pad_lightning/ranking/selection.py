"""MCQ selection probabilities from option log-probabilities, and the calibration mix.

Pure math on the judge's answers (`lm.judge` asks the questions): which option orders are asked
(pairwise or listwise, with or without debiasing), the win matrix, log p_sel in log space, and the
paper's mix t = (1 - alpha) r_T + alpha log p_sel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

MODES = ("pairwise", "listwise")


LOG_P_FLOOR = math.log(torch.finfo(torch.float32).tiny)
"""log p_sel is clamped here (about -87.3) only so that a letter of probability exactly 0 (a -inf
logit) gives a finite score; any judge probability a float32 represents is kept as is."""


def pairwise_questions(n: int, debias: bool) -> list[tuple[int, int]]:
    """Ordered pairs (first option, second option) asked for n responses."""
    if debias:
        return list(itertools.permutations(range(n), 2))
    return list(itertools.combinations(range(n), 2))


def win_matrix(
    p_first: torch.Tensor,
    questions: list[tuple[int, int]],
    n: int,
    debias: bool,
    p_second: torch.Tensor | None = None,
) -> torch.Tensor:
    """W[..., i, j] = P(y_i preferred over y_j) from P(first option chosen), [..., Q] -> [..., n, n].

    `p_second` is P(second option chosen) (default 1 - p_first, which rounds a tiny probability
    to 0 in float32: pass it, or use :func:`log_win_matrix`). Debiased: W[i, j] = (p_A(i, j) +
    p_B(j, i)) / 2, each order asked once. The diagonal is 0.
    """
    p_second = 1 - p_first if p_second is None else p_second
    first = torch.tensor([i for i, _ in questions])
    second = torch.tensor([j for _, j in questions])
    w = p_first.new_zeros((*p_first.shape[:-1], n, n))
    if debias:
        w[..., first, second] += p_first / 2
        w[..., second, first] += p_second / 2
    else:
        w[..., first, second] = p_first
        w[..., second, first] = p_second
    return w


def log_win_matrix(
    option_logp: torch.Tensor, questions: list[tuple[int, int]], n: int, debias: bool
) -> torch.Tensor:
    """log W[..., i, j] from the option log-probabilities [..., Q, 2]: [..., n, n].

    Both sides come from the log-softmax over the two letters (never 1 - p), so a confident
    judge's losing side keeps its value (log 2e-9 = -20, not log 0). Debiased: log of
    (p_A(i, j) + p_B(j, i)) / 2. The diagonal is -inf.
    """
    first = torch.tensor([i for i, _ in questions])
    second = torch.tensor([j for _, j in questions])
    shape = (*option_logp.shape[:-2], n, n)
    from_a = option_logp.new_full(shape, float("-inf"))  # W[i, j] as the first option of (i, j)
    from_b = option_logp.new_full(shape, float("-inf"))  # W[j, i] as the second option of (i, j)
    from_a[..., first, second] = option_logp[..., 0]
    from_b[..., second, first] = option_logp[..., 1]
    if not debias:
        return torch.maximum(from_a, from_b)  # each ordered pair is filled by one of them
    return torch.logaddexp(from_a, from_b) - math.log(2)


def listwise_orders(n: int, debias: bool) -> list[tuple[int, ...]]:
    """Option orders asked for n responses: the identity, or all n cyclic rotations."""
    return [tuple((i + r) % n for i in range(n)) for r in range(n if debias else 1)]


def questions_for(mode: str, n: int, debias: bool) -> list[tuple[int, ...]]:
    """The option orders (tuples of response indices, option A first) one prompt is asked."""
    if mode == "pairwise":
        return pairwise_questions(n, debias)
    if mode == "listwise":
        return listwise_orders(n, debias)
    raise ValueError(f"unknown calibration mode {mode!r}; valid: {', '.join(MODES)}")


def log_selection(
    option_logp: torch.Tensor, orders: list[tuple[int, ...]], mode: str, n: int, debias: bool
) -> torch.Tensor:
    """log p_sel [..., n] from the option log-probabilities [..., Q, k] of the questions `orders`.

    Pairwise: log of the mean win probability over the n - 1 others (:func:`log_win_matrix`).
    Listwise: log of each response's probability averaged over the orders that list it. All in
    log space (log-sum-exp of the option log-probabilities), so tiny probabilities keep their
    precision.
    """
    if mode == "pairwise":
        log_w = log_win_matrix(option_logp, orders, n, debias)
        return torch.logsumexp(log_w, dim=-1) - math.log(n - 1)
    # position of response i in question q: inverse of each order
    position = torch.tensor(orders).argsort(dim=-1)  # [Q, n]
    index = position.expand(*option_logp.shape[:-2], *position.shape)
    per_order = option_logp.gather(-1, index)  # [..., Q, n]: log p(response i's letter in q)
    return torch.logsumexp(per_order, dim=-2) - math.log(len(orders))


def selection_from(
    answer: Callable[[list[tuple[int, ...]]], tuple[torch.Tensor, int]],
    mode: str,
    n: int,
    debias: bool,
) -> tuple[torch.Tensor, int]:
    """log p_sel [P, n] of every response and the judge's cost: the questions of `mode` and
    `debias` (`questions_for`) put to a judge, `answer(orders)` -> (option log-probabilities
    [P, Q, k], cost), combined by `log_selection` and floored at LOG_P_FLOOR (a letter of
    probability exactly 0 gives a finite score). Every judge (a model's MCQs, the synthetic
    judge) goes through here."""
    orders = questions_for(mode, n, debias)
    option_logp, cost = answer(orders)
    return log_selection(option_logp, orders, mode, n, debias).clamp_min(LOG_P_FLOOR), cost


def mix(teacher_rewards: torch.Tensor, log_p_sel: torch.Tensor, alpha: float) -> torch.Tensor:
    """Paper formula: t = (1 - alpha) r_T + alpha log p_sel."""
    return (1 - alpha) * teacher_rewards + alpha * log_p_sel
