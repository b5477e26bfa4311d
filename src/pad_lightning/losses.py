"""Per-prompt PAD distillation losses on Plackett-Luce ranking distributions (pure torch).

Every loss has the signature ``fn(student_scores [B, n], teacher_scores [B, n]) -> [B]``: scores
are already ``beta * reward``; the teacher side is detached; the result is one loss per prompt
(average it over prompts yourself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pad_lightning.preference import (
    group,
    jsd,
    pl_kl,
    plackett_luce_log_prob,
    ranking_log_probs,
)

__all__ = ["LOSSES", "LossFn", "decomposed", "ppd", "ppd_kl", "ppd_reverse_kl", "vpd"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_pair(student_scores: Tensor, teacher_scores: Tensor) -> None:
    if student_scores.dim() != 2 or student_scores.shape != teacher_scores.shape:
        raise ValueError(
            "student and teacher scores must both be [B, n], got "
            f"{tuple(student_scores.shape)} and {tuple(teacher_scores.shape)}"
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


LOSSES: dict[str, LossFn] = {
    "ppd": ppd,
    "ppd_kl": ppd_kl,
    "ppd_reverse_kl": ppd_reverse_kl,
    "vpd": vpd,
}
"""Loss registry by name."""


def decomposed(
    fn: LossFn, student_scores: Tensor, teacher_scores: Tensor, group_size: int | None
) -> Tensor:
    """Apply ``fn`` per contiguous group of ``group_size`` responses, summed per prompt ``[B]``.

    With ``group_size`` None or ``>= n`` this is ``fn`` on the whole set (no decomposition).
    """
    _check_pair(student_scores, teacher_scores)
    b, n = student_scores.shape
    if group_size is None or group_size >= n:
        return fn(student_scores, teacher_scores)
    per_group = fn(group(student_scores, group_size), group(teacher_scores, group_size))
    return per_group.view(b, n // group_size).sum(dim=-1)
