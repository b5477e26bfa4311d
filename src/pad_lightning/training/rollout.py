"""Sampling n responses per prompt from the current student (KV-cached decoding: the
inverse-CDF sampler of `pad_lightning.lm.sampling` by default, or HF `generate`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.lm.chat import EncodedPair, encode_pairs, pad_id, same_tokenizer
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.ranking.selection import mix
from pad_lightning.runtime.errors import TrainingDiverged
from pad_lightning.runtime.nonfinite import describe_nonfinite
from pad_lightning.training.calibration import CalibrationConfig, selection
from pad_lightning.training.progress import phase


@dataclass
class Rollout:
    """n responses per prompt with everything the loss and the logs need."""

    prompts: list
    texts: list[list[str]]
    student_pairs: list[EncodedPair]
    teacher_rewards: torch.Tensor | None  # [P, n] length-normalised teacher log-likelihood
    log_p_sel: torch.Tensor | None  # [P, n] MCQ selection log-probability, if calibrated
    teacher_scores: torch.Tensor | None  # [P, n] t_i after calibration (None: not needed)
    lengths: torch.Tensor  # [P, n] generated tokens
    truncated: torch.Tensor  # [P, n]
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    reference_logps: torch.Tensor | None = None  # [P, n] summed log-probs, frozen initial student
    targets: list[EncodedPair] | None = None  # P x m student-side targets (teacher samples, gold)


@dataclass
class Extras:
    """What a rollout provides beyond the student's samples, by the objective's needs
    (`objectives.NEEDS`): the frozen `reference` model for reference log-probs, and the
    `references` (gold answers) of the prompts for gold targets and for the synthetic judge
    (`calibration.judge=synthetic`, which answers from their true quality q)."""

    needs: frozenset[str] = frozenset({"teacher_scores"})
    reference: torch.nn.Module | None = None
    references: list[str] | None = None


def collect(
    student: torch.nn.Module,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    n: int,
    sampling: SamplingConfig,
    calibration: CalibrationConfig,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
    extras: Extras | None = None,
) -> Rollout:
    """Sample from the current student; then what `extras.needs` asks for: teacher scores
    (scoring + calibration), reference log-probs, teacher samples or gold targets."""
    needs = (extras or Extras()).needs
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with phase(f"generating {len(prompts)} x {n} samples"):
        gens = generate(
            student,
            student_tokenizer,
            prompts,
            n,
            sampling,
            autocast_dtype=autocast_dtype,
            skip_special_tokens=False,  # score what was generated (see `generate`)
        )
    seconds["generation"] = time.perf_counter() - started
    finished = (~gens.truncated).view(len(prompts), n).tolist()
    student_pairs = encode_pairs(student_tokenizer, prompts, gens.texts, finished=finished)
    tokens = {"generated": int(gens.lengths.sum())}
    roll = Rollout(
        prompts,
        gens.texts,
        student_pairs,
        None,
        None,
        None,
        gens.lengths.view(len(prompts), n),
        gens.truncated.view(len(prompts), n),
        seconds,
        tokens,
    )
    if "teacher_tokens" in needs:  # the teacher's forward pass runs per batch (build_batch)
        tokens["teacher_tokens"] = sum(len(p.ids) for p in student_pairs)
    if "teacher_scores" in needs:
        _teacher_scores(
            roll,
            student_tokenizer,
            teacher,
            teacher_tokenizer,
            calibration,
            max_tokens,
            autocast_dtype,
            (extras or Extras()).references,
        )
    if "reference" in needs:
        started = time.perf_counter()
        with phase("reference log-probs"):
            ref = extras.reference
            rewards = score_pairs(
                ref,
                student_pairs,
                pad_id(student_tokenizer),
                max_tokens,
                next(ref.parameters()).device,
                autocast_dtype,
            )
        counts = torch.tensor([len(p.ids) - p.prompt_len for p in student_pairs])
        roll.reference_logps = (rewards * counts).view(len(prompts), n)
        seconds["reference"] = time.perf_counter() - started
        tokens["reference"] = sum(len(p.ids) for p in student_pairs)
    if "teacher_samples" in needs:
        started = time.perf_counter()
        with phase(f"teacher answers: {len(prompts)} x {n} samples"):
            answers = generate(
                teacher, teacher_tokenizer, prompts, n, sampling, autocast_dtype=autocast_dtype
            )
        done = (~answers.truncated).view(len(prompts), n).tolist()
        roll.targets = encode_pairs(student_tokenizer, prompts, answers.texts, finished=done)
        seconds["teacher_generation"] = time.perf_counter() - started
        tokens["teacher_generation"] = int(answers.lengths.sum())
    if "gold" in needs:
        roll.targets = encode_pairs(student_tokenizer, prompts, [[r] for r in extras.references])
    return roll


def _teacher_scores(
    roll: Rollout,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    calibration: CalibrationConfig,
    max_tokens: int,
    autocast_dtype: torch.dtype | None,
    references: list | None = None,
) -> None:
    """Score the rollout's samples with the frozen teacher and calibrate (in place); the
    synthetic judge reads the prompts' `references`."""
    prompts, seconds, tokens = roll.prompts, roll.seconds, roll.tokens
    n = roll.lengths.shape[1]
    started = time.perf_counter()
    if same_tokenizer(student_tokenizer, teacher_tokenizer):  # the student's ids, as they are
        teacher_pairs = roll.student_pairs
    else:  # the text, rendered in the teacher's own template (see pad_lightning.lm.chat)
        teacher_pairs = encode_pairs(
            teacher_tokenizer, prompts, roll.texts, finished=(~roll.truncated).tolist()
        )
    device = next(teacher.parameters()).device
    with phase("teacher scoring"):
        rewards = score_pairs(
            teacher, teacher_pairs, pad_id(teacher_tokenizer), max_tokens, device, autocast_dtype
        )
    rewards = rewards.view(len(prompts), n)
    seconds["teacher_scoring"] = time.perf_counter() - started
    tokens["teacher_scoring"] = sum(len(p.ids) for p in teacher_pairs)

    log_p_sel = None
    scores = rewards
    if calibration.asks():  # alpha = 0: t = r_T exactly
        started = time.perf_counter()
        judge = "teacher MCQ" if calibration.judge == "teacher" else "synthetic judge"
        with phase(f"calibration ({judge})"):
            log_p_sel, tokens["calibration"] = selection(
                calibration,
                teacher,
                teacher_tokenizer,
                prompts,
                roll.texts,
                references,
                max_tokens,
                autocast_dtype,
            )
        scores = mix(rewards, log_p_sel, calibration.alpha)
        seconds["calibration"] = time.perf_counter() - started
    for name, values in (("rewards", rewards), ("calibrated scores", scores)):
        problem = describe_nonfinite(
            f"teacher {name} of {len(prompts)} prompts x {n} responses", values
        )
        if problem:
            raise TrainingDiverged(
                f"{problem}; the teacher model (model.teacher) gives non-finite "
                "log-probabilities: check its weights, and prefer trainer.inference_dtype="
                "bfloat16 or float32 to float16"
            )
    roll.teacher_rewards, roll.log_p_sel, roll.teacher_scores = rewards, log_p_sel, scores
