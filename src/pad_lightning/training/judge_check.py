"""The judge check before a run that trains on calibrated scores: is the MCQ judge better than
chance on the responses it will judge?

The initial student samples n responses for each of the first `prompts` validation prompts (at
the rollout's sampling settings, from a seeded stream of its own, so the run's random numbers
are untouched), and the run's judge (`calibration.judge`, through `calibration.answers`, as in
training) is asked every pair of them in both orders: two-option questions in the run's
templates, whatever `calibration.mode`. `ranking.judge_accuracy` measures

* order agreement: over the pairs of different texts, how often the judge prefers the same
  response in both orders (no labels needed: works for any prompt set; chance is 0.5, a judge
  that answers by position scores 0), and
* where every prompt has a reference answer, accuracy on the graded pairs (|q_i - q_j| >= `gap`,
  q the true quality), both orders averaged (chance, and a positional judge, score 0.5),

each with a 95% Wilson interval and its number of pairs. The deciding measure is accuracy where
it was measured, else agreement; the judge is *at chance* unless its whole interval lies above
0.5. The run refuses to train on an at-chance judge unless `refuse` is false.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.data.answers import reference_quality
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.ranking.judge_accuracy import (
    Rate,
    graded_accuracy,
    order_agreement,
    preference_signs,
)
from pad_lightning.ranking.selection import pairwise_questions
from pad_lightning.training.calibration import CalibrationConfig, answers, judge_seed
from pad_lightning.training.rollout import Extras, collect

CHANCE = 0.5


@dataclass
class CheckConfig:
    """`prompts`: validation prompts sampled for the check (0: no check); `gap`: the smallest
    quality difference of a graded pair; `refuse`: refuse to train on an at-chance judge."""

    prompts: int = 32
    gap: float = 0.2
    refuse: bool = True


@dataclass
class JudgeReport:
    """What the check measured, for the log line, the refusal and MLflow (`judge/` keys)."""

    judge: str
    prompts: int
    n: int
    gap: float
    agreement: Rate
    accuracy: Rate | None  # None: some prompt has no reference answer
    tokens: int
    seconds: float

    def deciding(self) -> tuple[str, Rate]:
        """The measure the verdict rests on: accuracy where measured, else agreement."""
        if self.accuracy is not None and self.accuracy.trials:
            return "accuracy", self.accuracy
        return "order agreement", self.agreement

    def at_chance(self) -> bool:
        """Whether the deciding measure's 95% interval fails to lie above 0.5."""
        return not self.deciding()[1].excludes(CHANCE)

    def measured(self) -> str:
        """`accuracy 0.912 [0.874, 0.940] on 150 graded pairs ..., order agreement ...`."""
        parts = []
        if self.accuracy is not None:
            graded = f"graded pairs (|q_i - q_j| >= {self.gap:g}, both orders)"
            if self.accuracy.trials:
                parts.append(f"accuracy {_rate(self.accuracy)} on {self.accuracy.trials} {graded}")
            else:
                parts.append(f"accuracy not measured (no {graded})")
        if self.agreement.trials:
            parts.append(
                f"order agreement {_rate(self.agreement)} on {self.agreement.trials} pairs"
            )
        else:
            parts.append("order agreement not measured (no pair of different responses)")
        return ", ".join(parts)

    def _why(self) -> str:
        name, rate = self.deciding()
        if not rate.trials:
            return "nothing was measured (raise calibration.check.prompts)"
        return f"{name}'s 95% interval does not lie above 0.5"

    def line(self) -> str:
        """The terminal line of a check the run passed (or overrode)."""
        where = f"{self.prompts} validation prompts x {self.n}"
        head = f"judge check ({self.judge} judge, {where}, {self.seconds:.1f}s): {self.measured()}"
        if not self.at_chance():
            return f"{head}: above chance"
        return (
            f"{head}: at chance ({self._why()}); training anyway (calibration.check.refuse=false)"
        )

    def refusal(self, alpha: float) -> str:
        """The one-line reason a run refuses to train on this judge."""
        return (
            f"calibration.alpha={alpha:g} with calibration.judge={self.judge}: the judge is at "
            f"chance on the initial student's samples of {self.prompts} validation prompts x "
            f"{self.n}: {self.measured()}; {self._why()}, so training would teach the student "
            "what the judge prefers, not what is better; set calibration.alpha=0 (likelihood "
            "only), use a better judge, or calibration.check.refuse=false to train anyway"
        )

    def metrics(self) -> dict[str, float]:
        """MLflow metrics under judge/: each rate, its interval and its number of pairs; its cost
        under system/run/ with the run's other totals (system/time/ holds per-epoch parts only)."""
        out = {"judge/at_chance": float(self.at_chance())}
        out["system/run/judge_check_s"] = self.seconds
        out["system/run/judge_check_tokens"] = float(self.tokens)
        rates = {"agreement": self.agreement, "accuracy": self.accuracy}
        for name, rate in rates.items():
            if rate is None:
                continue
            out[f"judge/{name}_pairs"] = float(rate.trials)
            if not rate.trials:  # nothing measured: no value, no interval
                continue
            low, high = rate.interval()
            out[f"judge/{name}"] = rate.value
            out[f"judge/{name}_low"], out[f"judge/{name}_high"] = low, high
        return out

    def params(self) -> dict[str, str]:
        """MLflow params under judge/: what was measured on, and the verdict."""
        verdict = "at chance (trained anyway)" if self.at_chance() else "above chance"
        return {
            "judge/check_prompts": str(self.prompts),
            "judge/check_n": str(self.n),
            "judge/verdict": verdict,
            "judge/decided_by": self.deciding()[0],
        }


def _rate(rate: Rate) -> str:
    low, high = rate.interval()
    return f"{rate.value:.3f} [{low:.3f}, {high:.3f}]"


@torch.no_grad()
def measure_judge(
    student: torch.nn.Module,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    problems: list,
    n: int,
    sampling: SamplingConfig,
    calibration: CalibrationConfig,
    check: CheckConfig,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> JudgeReport:
    """The check on the initial student's samples of the first `check.prompts` of `problems`
    (see the module docstring); the global random stream is left as it was."""
    started = time.perf_counter()
    problems = problems[: check.prompts]
    prompts = [p.prompt for p in problems]
    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(judge_seed(calibration.seed, ["judge check"], []))
        roll = collect(
            student,
            student_tokenizer,
            teacher,
            teacher_tokenizer,
            prompts,
            n,
            sampling,
            calibration,
            max_tokens,
            autocast_dtype,
            Extras(needs=frozenset()),  # the samples only
        )
    report = judge_report(
        calibration,
        teacher,
        teacher_tokenizer,
        prompts,
        roll.texts,
        [getattr(p, "reference", None) for p in problems],
        check.gap,
        max_tokens,
        autocast_dtype,
    )
    report.seconds = time.perf_counter() - started
    return report


@torch.no_grad()
def judge_report(
    calibration: CalibrationConfig,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    texts: list[list[str]],
    references: list,
    gap: float = 0.2,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> JudgeReport:
    """The judge (`calibration.answers`) on every pair of each prompt's `texts` in both orders:
    order agreement, and accuracy on graded pairs where every prompt has a reference."""
    started = time.perf_counter()
    n = len(texts[0])
    option_logp, tokens = answers(
        calibration,
        teacher,
        teacher_tokenizer,
        prompts,
        texts,
        pairwise_questions(n, True),
        references,
        max_tokens,
        autocast_dtype,
    )
    signs = preference_signs(option_logp, n)
    different = torch.tensor([[[a != b for b in g] for a in g] for g in texts])
    accuracy = None
    if all(r is not None for r in references):
        accuracy = graded_accuracy(signs, reference_quality(texts, references), gap)
    return JudgeReport(
        judge=calibration.judge,
        prompts=len(prompts),
        n=n,
        gap=gap,
        agreement=order_agreement(signs, different),
        accuracy=accuracy,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )
