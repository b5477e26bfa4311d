"""Sampling n responses per prompt from the current student (KV-cached decoding: the
inverse-CDF sampler of `pad_lightning.sampling` by default, or HF `generate`)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from .calibration import DEFAULT_OPTION_TEMPLATE, DEFAULT_TEMPLATE, mix, selection_log_probs
from .chat import EncodedPair, encode_pairs, encode_prompt, pad_id, same_tokenizer
from .divergence import TrainingDiverged, describe_nonfinite
from .progress import phase
from .rewards import score_pairs
from .sampling import decode, hf_only_settings


@dataclass
class SamplingConfig:
    """Sampling knobs; top_k=0 and top_p=1 disable those filters explicitly."""

    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    batch_size: int = 256
    sampler: str = "inverse_cdf"  # or "hf": transformers' generate (see pad_lightning.sampling)


@dataclass
class Generations:
    """`texts[i][j]`: j-th response to prompt i; `lengths` in generated tokens; truncated flags."""

    texts: list[list[str]]
    lengths: torch.Tensor
    truncated: torch.Tensor


def stop_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _hf_kwargs(sampling: SamplingConfig, stops: list[int], pad: int, greedy: bool, n: int):
    """transformers' `generate` arguments for rollout.sampler=hf (and the HF-only fallback)."""
    kwargs = dict(
        max_new_tokens=sampling.max_new_tokens, eos_token_id=stops, pad_token_id=pad, use_cache=True
    )
    if greedy:
        kwargs.update(
            do_sample=False, num_return_sequences=1, temperature=None, top_p=None, top_k=None
        )
    else:
        kwargs.update(
            do_sample=True,
            num_return_sequences=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
        )
    return kwargs


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    n: int,
    sampling: SamplingConfig,
    greedy: bool = False,
    autocast_dtype: torch.dtype | None = None,
    skip_special_tokens: bool = True,
) -> Generations:
    """n samples (or one greedy answer) per prompt, prompts rendered in the model's template.

    Each text is the decoded generated tokens up to (not including) the first stop token.
    `skip_special_tokens=True` (answers for people and judges) drops the special tokens the model
    produced; rollouts and evaluation pass False, so that what is scored is what was generated:
    a special token stays in the text, re-encodes to itself and is scored (dropping it could
    leave an empty text, which would earn the best reward). Padding never appears in a text:
    rows are cut at their first stop token, and generation pads a row only after one.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    padding = pad_id(tokenizer)
    per_call = max(1, sampling.batch_size // (1 if greedy else n))
    own_sampler = sampling.sampler != "hf"
    hf_only = hf_only_settings(getattr(model, "generation_config", None)) if own_sampler else []
    if hf_only:
        warnings.warn(
            f"rollout.sampler={sampling.sampler}: the model's generation_config sets "
            f"{', '.join(hf_only)}, which only transformers' generate applies; sampling with it",
            stacklevel=2,
        )
        own_sampler = False
    texts: list[list[str]] = []
    lengths, truncated = [], []
    for start in range(0, len(prompts), per_call):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_call]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), padding, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # left padding: generation continues every row's end
            ids[i, width - len(e) :] = torch.tensor(e)
            attn[i, width - len(e) :] = 1
        k = 1 if greedy else n
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            if own_sampler:  # each prompt's k rows side by side, as HF returns them
                new = decode(
                    model,
                    ids.repeat_interleave(k, 0).to(device),
                    attn.repeat_interleave(k, 0).to(device),
                    sampling.max_new_tokens,
                    stops,
                    padding,
                    sampling.temperature,
                    sampling.top_k,
                    sampling.top_p,
                    greedy=greedy,
                    suppress=list(getattr(model.generation_config, "suppress_tokens", None) or []),
                )
            else:
                new = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    **_hf_kwargs(sampling, stops, padding, greedy, n),
                )[:, width:]
        grouped, length, cut = _cut(new.cpu(), stops, tokenizer, skip_special_tokens, k)
        texts.extend(grouped)
        lengths.append(length)
        truncated.append(cut)
    if was_training:
        model.train()
    return Generations(texts, torch.cat(lengths).float(), torch.cat(truncated))


def _cut(new: torch.Tensor, stops: list[int], tokenizer, skip_special_tokens: bool, k: int):
    """(texts grouped k per prompt, lengths with the stop token, truncated flags) of new tokens
    [rows, steps], each row cut before its first stop token."""
    is_stop = torch.isin(new, torch.tensor(stops))
    ended = is_stop.any(-1)
    first_stop = torch.where(ended, is_stop.int().argmax(-1), new.shape[1])
    decoded = tokenizer.batch_decode(
        [row[:j] for row, j in zip(new, first_stop.tolist(), strict=True)],
        skip_special_tokens=skip_special_tokens,
    )
    grouped = [decoded[i : i + k] for i in range(0, len(decoded), k)]
    return grouped, first_stop + ended.long(), ~ended


@dataclass
class CalibrationConfig:
    """`name`: none | mcq. `alpha` weights log p_sel (paper formula); `mode`: pairwise | listwise;
    `debias` asks both orders (pairwise) or every cyclic rotation (listwise) and averages."""

    name: str = "mcq"
    alpha: float = 0.8
    mode: str = "pairwise"
    debias: bool = True
    template: str = DEFAULT_TEMPLATE
    option_template: str = DEFAULT_OPTION_TEMPLATE


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
    `references` (gold answers) of the prompts for gold targets."""

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
) -> None:
    """Score the rollout's samples with the frozen teacher and calibrate (in place)."""
    prompts, seconds, tokens = roll.prompts, roll.seconds, roll.tokens
    n = roll.lengths.shape[1]
    started = time.perf_counter()
    if same_tokenizer(student_tokenizer, teacher_tokenizer):  # the student's ids, as they are
        teacher_pairs = roll.student_pairs
    else:  # the text, rendered in the teacher's own template (see pad_lightning.chat)
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
    if calibration.name == "mcq" and calibration.alpha > 0:  # alpha = 0: t = r_T exactly
        started = time.perf_counter()
        questions = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        with phase("calibration (teacher MCQ)"):
            log_p_sel, tokens["calibration"] = selection_log_probs(
                teacher,
                teacher_tokenizer,
                questions,
                roll.texts,
                calibration.mode,
                calibration.debias,
                calibration.template,
                max_tokens,
                autocast_dtype,
                calibration.option_template,
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
