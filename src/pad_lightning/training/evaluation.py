"""Held-out metrics of a PADModule's student on a list of problems (shared docs section 5).

Greedy answers give exact match and quality (where references exist) and the teacher's reward of
the student's own answers; fresh samples at rollout temperature give the loss and the ranking
agreement between student and teacher scores (and, in the toy world, with true quality q).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pad_lightning.data.answers import answer_metrics, answer_rows, quality_matrix
from pad_lightning.lm.chat import encode_pairs, pad_id
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.ranking.agreement import kendall_tau, nanmean, top1_agreement
from pad_lightning.training.progress import phase
from pad_lightning.training.rollout import CalibrationConfig, collect


@dataclass
class EvalConfig:
    n: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    max_tokens: int = 16384
    seed: int = 0  # seeds the evaluation's own sampling stream (see PADModule._eval_step)
    loss_batch: int = 64  # prompts per batch of the held-out loss (the training batch size)


def objective_loss(module, roll, prompts_per_batch: int) -> float:
    """The run's objective on a held-out rollout, averaged over its prompts (batched like
    training, so a token-level objective's teacher logits never exceed a training batch's)."""
    total, count = 0.0, len(roll.prompts)
    for start in range(0, count, prompts_per_batch):
        indices = list(range(start, min(start + prompts_per_batch, count)))
        batch = module.batch(roll, indices)
        batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        per_prompt, _ = module.objective_loss(batch)
        total += float(per_prompt.sum())
    return total / count


@torch.no_grad()
def evaluate(
    module,
    problems: list,
    cfg: EvalConfig,
    autocast_dtype: torch.dtype | None = None,
    answers_out: list | None = None,
) -> dict[str, float]:
    """Metrics of `module.student` against `module.teacher` on `problems`; with `answers_out`,
    the greedy answers are appended to it as rows (`data.answers.answer_rows`)."""
    student, teacher = module.student, module.teacher
    tok_s, tok_t = module.student_tokenizer, module.teacher_tokenizer
    prompts = [p.prompt for p in problems]
    refs = [getattr(p, "reference", None) for p in problems]
    out: dict[str, float] = {}

    with phase(f"greedy answers to {len(prompts)} prompts"):
        greedy = generate(
            student,
            tok_s,
            prompts,
            1,
            cfg.sampling,
            greedy=True,
            autocast_dtype=autocast_dtype,
            skip_special_tokens=False,  # score what was generated (see `rollout.generate`)
        )
    answers = [t[0] for t in greedy.texts]
    if all(r is not None for r in refs):
        out.update(answer_metrics(answers, refs))
    if answers_out is not None:
        answers_out.extend(answer_rows(prompts, answers, refs))
    finished = (~greedy.truncated).view(-1, 1).tolist()
    pairs = encode_pairs(tok_t, prompts, [[a] for a in answers], finished=finished)
    out["teacher_reward"] = float(
        score_pairs(
            teacher,
            pairs,
            pad_id(tok_t),
            cfg.max_tokens,
            next(teacher.parameters()).device,
            autocast_dtype,
        ).mean()
    )
    out["answer_length"] = float(greedy.lengths.mean())
    out["answer_truncated"] = float(greedy.truncated.float().mean())

    # The agreement metrics need teacher scores whatever the objective; its loss needs its extras.
    extras = module.extras([getattr(p, "reference", None) for p in problems])
    extras.needs = extras.needs | {"teacher_scores"}
    roll = collect(
        student,
        tok_s,
        teacher,
        tok_t,
        prompts,
        cfg.n,
        cfg.sampling,
        cfg.calibration,
        cfg.max_tokens,
        autocast_dtype,
        extras,
    )
    device = next(student.parameters()).device
    r_s = score_pairs(
        student, roll.student_pairs, pad_id(tok_s), cfg.max_tokens, device, autocast_dtype
    ).view(len(prompts), cfg.n)
    out["loss"] = objective_loss(module, roll, cfg.loss_batch)
    out["kendall_tau"] = nanmean(kendall_tau(r_s, roll.teacher_scores))
    out["top1_agreement"] = float(top1_agreement(r_s, roll.teacher_scores).mean())
    q = quality_matrix(roll.texts, problems)
    if q is not None:
        out["teacher_q_tau"] = nanmean(kendall_tau(roll.teacher_scores, q))
        out["student_q_tau"] = nanmean(kendall_tau(r_s, q))
        out["sample_quality"] = float(q.mean())
    return out
