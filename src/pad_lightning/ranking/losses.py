"""Per-prompt PAD distillation losses on Plackett-Luce ranking distributions (pure torch).

Every loss has the signature ``fn(student_scores [B, n], teacher_scores [B, n]) -> [B]``: scores
are already ``beta * reward``; the teacher side is detached; the result is one loss per prompt
(average it over prompts yourself). Non-finite scores (NaN, +-inf) on either side raise
:class:`NonFiniteScoresError` instead of becoming a NaN loss or a silently wrong ranking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pad_lightning.ranking.plackett_luce import (
    MAX_DP_N,
    MAX_EXACT_N,
    group,
    jsd,
    pl_kl,
    plackett_luce_log_prob,
    ranking_log_probs,
)
from pad_lightning.runtime.errors import NonFiniteScoresError
from pad_lightning.runtime.nonfinite import describe_nonfinite

__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "LossFn",
    "NonFiniteScoresError",
    "decomposed",
    "loss_function",
    "max_group_size",
    "ppd",
    "ppd_kl",
    "ppd_reverse_kl",
    "vpd",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_shapes(student_scores: Tensor, teacher_scores: Tensor) -> None:
    if student_scores.dim() != 2 or student_scores.shape != teacher_scores.shape:
        raise ValueError(
            "student and teacher scores must both be [B, n], got "
            f"{tuple(student_scores.shape)} and {tuple(teacher_scores.shape)}"
        )


def _check_pair(student_scores: Tensor, teacher_scores: Tensor) -> None:
    _check_shapes(student_scores, teacher_scores)
    both = torch.stack([torch.isfinite(student_scores).all(), torch.isfinite(teacher_scores).all()])
    if bool(both.all()):  # one device sync for both sides
        return
    problems = [
        p
        for p in (
            describe_nonfinite("student scores", student_scores),
            describe_nonfinite("teacher scores", teacher_scores),
        )
        if p
    ]
    if problems:
        raise NonFiniteScoresError(
            "; ".join(problems) + "; a loss on them would be NaN or rank them arbitrarily "
            "(look for a NaN/inf reward or log p_sel, or an overflowing beta)"
        )


def ppd(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """PPD: Jensen-Shannon divergence between the exact teacher and student ranking laws."""
    _check_pair(student_scores, teacher_scores)
    log_p_teacher = ranking_log_probs(teacher_scores.detach())
    log_p_student = ranking_log_probs(student_scores)
    return jsd(log_p_teacher, log_p_student)


def ppd_kl(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """Forward KL ``KL(P_T || P_S)`` between Plackett-Luce ranking laws (subset DP)."""
    _check_pair(student_scores, teacher_scores)
    return pl_kl(teacher_scores.detach(), student_scores)


def ppd_reverse_kl(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """Reverse KL ``KL(P_S || P_T)`` between Plackett-Luce ranking laws (subset DP)."""
    _check_pair(student_scores, teacher_scores)
    return pl_kl(student_scores, teacher_scores.detach())


def vpd(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """VPD (ListMLE): ``-log P_S(argsort(teacher, descending))``; ties keep index order."""
    _check_pair(student_scores, teacher_scores)
    ranking = torch.argsort(teacher_scores.detach(), dim=-1, descending=True, stable=True)
    return -plackett_luce_log_prob(student_scores, ranking)


DIVERGENCES: dict[str, LossFn] = {"jsd": ppd, "kl": ppd_kl, "reverse_kl": ppd_reverse_kl}
"""PPD's divergence between the teacher and student ranking laws, by `loss.divergence`."""

LOSSES: dict[str, LossFn] = {"ppd": ppd, "vpd": vpd}
"""Loss registry by `loss.name` (PPD with its default divergence, JSD)."""

_MAX_GROUP = {"jsd": MAX_EXACT_N, "kl": MAX_DP_N, "reverse_kl": MAX_DP_N}


def loss_function(name: str, divergence: str | None = None) -> LossFn:
    """The per-prompt loss for `loss.name` (and, for PPD, `loss.divergence`; None = jsd)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    if name == "ppd":
        divergence = divergence or "jsd"
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; valid: {sorted(DIVERGENCES)}")
        return DIVERGENCES[divergence]
    return LOSSES[name]


def max_group_size(name: str, divergence: str | None = None) -> int | None:
    """Largest number of responses ranked together that a loss computes exactly (None: any).

    JSD enumerates all k! rankings (k <= MAX_EXACT_N); the KLs use the O(2^k k) subset DP
    (k <= MAX_DP_N); VPD (ListMLE) is O(k log k).
    """
    if name == "ppd":
        return _MAX_GROUP[divergence or "jsd"]
    return None


def decomposed(
    fn: LossFn, student_scores: Tensor, teacher_scores: Tensor, group_size: int | None
) -> Tensor:
    """Apply ``fn`` per contiguous group of ``group_size`` responses, summed per prompt ``[B]``.

    With ``group_size`` None or ``>= n`` this is ``fn`` on the whole set (no decomposition).
    """
    _check_shapes(student_scores, teacher_scores)  # fn checks finiteness (once, not twice)
    b, n = student_scores.shape
    if group_size is None or group_size >= n:
        return fn(student_scores, teacher_scores)
    per_group = fn(group(student_scores, group_size), group(teacher_scores, group_size))
    return per_group.view(b, n // group_size).sum(dim=-1)
