"""Training objectives by `loss.name`: PAD's losses and the baselines a study compares against.

Every objective declares what its batch needs beyond the student's own on-policy samples (always
present: `input_ids`, `attention_mask`, `score_mask` of the P x n sampled responses):

* ``teacher_scores``  -- calibrated teacher scores t [P, n] (teacher scoring + MCQ calibration);
* ``reference``       -- summed log-probs [P, n] of the samples under the frozen initial student;
* ``teacher_tokens``  -- the teacher's next-token logits on the samples (same tokenizer only);
* ``teacher_samples`` -- n answers per prompt sampled from the teacher, as student-side targets;
* ``gold``            -- the reference answers (toy world, prompt sets with references).

The rollout (`rollout.collect`) and the batch builder (:func:`build_batch`) provide exactly what
is declared, so a run pays only for the teacher work its objective uses, and the training loop has
no per-method branch: it calls ``objective.loss(StudentView(student, batch), batch, cfg)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from pad_lightning.lm.precision import autocast
from pad_lightning.lm.scoring import (
    PaddedBatch,
    pad_pairs,
    response_logits,
    scored_counts,
    token_log_probs,
)
from pad_lightning.ranking import baselines, losses

NEEDS = ("teacher_scores", "reference", "teacher_tokens", "teacher_samples", "gold")


@dataclass
class LossConfig:
    """`name` picks an objective of `OBJECTIVES`; the other keys are that objective's knobs
    (each conf/loss/<name>.yaml sets the ones it uses; the rest keep these defaults)."""

    name: str = "ppd"
    beta_student: float = 1.0  # PAD: student scores s_S = beta_student * r_S
    beta_teacher: float = 1.0  # PAD: teacher scores s_T = beta_teacher * t
    group_size: int | None = None  # decomposition=split|iterative: groups of k responses
    divergence: str | None = "jsd"  # PPD: jsd | kl | reverse_kl
    beta: float = 0.1  # DPO, DPO-PL, LiPO: on log(pi / pi_ref); SimPO: on r
    gamma: float = 0.0  # SimPO margin, in reward units (subtracted after beta)
    pairs: str = "best_worst"  # DPO, SimPO: best_worst | all | random
    sft_weight: float = 1.0  # RRHF: weight of the NLL of the teacher's best response
    jsd_beta: float = 0.5  # GKD: generalized JSD mixture weight (0: forward KL, 1: reverse KL)
    temperature: float = 1.0  # GKD: softmax temperature of both token distributions


LOSS_KNOBS = ("beta", "gamma", "pairs", "sft_weight", "jsd_beta", "temperature")
"""The objective-specific keys a conf/loss/*.yaml may set (besides name, betas, divergence)."""


class StudentView:
    """The student's log-probabilities of a batch, each computed once, on first use."""

    def __init__(self, model: torch.nn.Module, batch: dict):
        self.model, self.batch = model, batch
        self.shape = tuple(batch["shape"])  # (P, n), plain ints

    @cached_property
    def samples(self) -> PaddedBatch:
        b = self.batch
        return PaddedBatch(b["input_ids"], b["attention_mask"], b["score_mask"])

    @cached_property
    def lengths(self) -> Tensor:
        """Scored tokens of each sample, [P, n]."""
        return scored_counts(self.samples.score_mask).view(self.shape)

    @cached_property
    def logps(self) -> Tensor:
        """Summed log-probability of each sample, [P, n] (with autograd)."""
        token = token_log_probs(self.model, self.samples)
        return (token * self.samples.score_mask).sum(-1).float().view(self.shape)

    @cached_property
    def rewards(self) -> Tensor:
        """Length-normalised log-likelihood r_S of each sample, [P, n]."""
        return self.logps / self.lengths

    @cached_property
    def token_logits(self) -> tuple[Tensor, Tensor]:
        """(logits predicting each scored token [N, T, V], mask [N, T]), aligned with
        `teacher_logits` of the batch (same rows, same first position)."""
        logits, first = response_logits(self.model, self.samples)
        return logits[:, :-1], self.samples.score_mask[:, first + 1 :]

    @cached_property
    def target(self) -> tuple[Tensor, Tensor]:
        """(summed log-probs, lengths) of the batch's targets (teacher samples or gold), [P, m]."""
        b = self.batch
        padded = PaddedBatch(b["target_ids"], b["target_attention_mask"], b["target_score_mask"])
        token = token_log_probs(self.model, padded)
        shape = (self.shape[0], -1)
        lengths = scored_counts(padded.score_mask).view(shape)
        return (token * padded.score_mask).sum(-1).float().view(shape), lengths


LossOf = Callable[[StudentView, dict, LossConfig], Tensor]


@dataclass(frozen=True)
class Objective:
    """A training objective: the per-prompt loss [P] and what its batch needs (`NEEDS`)."""

    name: str
    needs: frozenset[str]
    loss: LossOf
    ranks: bool = False  # a listwise ranking loss on scores: decomposition=split applies


def _pad(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    fn = losses.loss_function(cfg.name, cfg.divergence)
    return losses.decomposed(
        fn,
        cfg.beta_student * view.rewards,
        cfg.beta_teacher * batch["teacher_scores"],
        cfg.group_size,
    )


def _dpo(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    return baselines.dpo(
        view.logps, batch["reference_logps"], batch["teacher_scores"], cfg.beta, cfg.pairs
    )


def _simpo(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    return baselines.simpo(view.rewards, batch["teacher_scores"], cfg.beta, cfg.gamma, cfg.pairs)


def _dpo_pl(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    return baselines.dpo_pl(view.logps, batch["reference_logps"], batch["teacher_scores"], cfg.beta)


def _lipo(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    return baselines.lipo_lambda(
        view.logps, batch["reference_logps"], batch["teacher_scores"], cfg.beta
    )


def _rrhf(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    return baselines.rrhf(view.rewards, view.logps, batch["teacher_scores"], cfg.sft_weight)


def _gkd(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    logits, mask = view.token_logits
    per_row = baselines.generalized_jsd(
        logits, batch["teacher_logits"], mask, cfg.jsd_beta, cfg.temperature
    )
    return per_row.view(view.shape).mean(-1)


def _nll(view: StudentView, batch: dict, cfg: LossConfig) -> Tensor:
    logps, lengths = view.target
    return baselines.sequence_nll(logps, lengths)


_SCORES = frozenset({"teacher_scores"})
_REF = frozenset({"teacher_scores", "reference"})
OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("ppd", _SCORES, _pad, ranks=True),
        Objective("vpd", _SCORES, _pad, ranks=True),
        Objective("dpo", _REF, _dpo),
        Objective("simpo", _SCORES, _simpo),
        Objective("dpo_pl", _REF, _dpo_pl),
        Objective("lipo", _REF, _lipo),
        Objective("rrhf", _SCORES, _rrhf),
        Objective("gkd", frozenset({"teacher_tokens"}), _gkd),
        Objective("seqkd", frozenset({"teacher_samples"}), _nll),
        Objective("sft", frozenset({"gold"}), _nll),
    )
}
"""Every `loss=` option, by `loss.name`."""


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"loss.name={name!r}: unknown loss; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, samples: PaddedBatch, autocast_dtype=None) -> Tensor:
    """The teacher's logits predicting each scored token of `samples` [N, T, V] (float32),
    aligned with `StudentView.token_logits` (the same ids: GKD requires one tokenizer)."""
    device = next(teacher.parameters()).device
    batch = samples.to(device)
    with autocast(device, autocast_dtype):
        logits, _ = response_logits(teacher, batch)
    return logits[:, :-1].float()


def build_batch(
    roll, indices: list[int], pad_id: int, needs: frozenset[str], teacher=None, autocast_dtype=None
) -> dict:
    """The training batch of prompts `indices` of a rollout, with what `needs` asks for.

    Always: the P x n student samples, padded (`input_ids`, `attention_mask`, `score_mask`) and
    their `shape` [P, n]. Then `teacher_scores`, `reference_logps` [P, n]; `teacher_logits` (a
    teacher forward pass on these rows, made here, just before the step); `target_*` (the
    teacher's samples or the gold answers of these prompts, padded).
    """
    n = roll.lengths.shape[1]
    rows = [roll.student_pairs[i * n + j] for i in indices for j in range(n)]
    padded = pad_pairs(rows, pad_id)
    batch = {
        "input_ids": padded.input_ids,
        "attention_mask": padded.attention_mask,
        "score_mask": padded.score_mask,
        "shape": (len(indices), n),
    }
    if "teacher_scores" in needs:
        batch["teacher_scores"] = roll.teacher_scores[indices]
    if "reference" in needs:
        batch["reference_logps"] = roll.reference_logps[indices]
    if "teacher_tokens" in needs:
        batch["teacher_logits"] = teacher_logits(teacher, padded, autocast_dtype)
    if needs & {"teacher_samples", "gold"}:
        m = len(roll.targets) // len(roll.prompts)
        targets = pad_pairs([roll.targets[i * m + j] for i in indices for j in range(m)], pad_id)
        batch["target_ids"] = targets.input_ids
        batch["target_attention_mask"] = targets.attention_mask
        batch["target_score_mask"] = targets.score_mask
    return batch
