"""MCQ calibration of a rollout's teacher scores, and who answers the MCQs.

t_i = (1 - alpha) r_T(y_i) + alpha log p_sel(y_i). The questions (option orders) are those of
`ranking.selection.questions_for(mode, n, debias)`; their option log-probabilities [P, Q, k]
come from the judge, and `ranking.selection.log_selection` turns them into log p_sel:

* ``judge=teacher``: the frozen teacher answers MCQs rendered in its chat template
  (`lm.judge.question_log_probs`), costing teacher tokens;
* ``judge=synthetic``: a judge of known accuracy answers from the true quality q of the
  responses against the prompts' reference answers (`ranking.synthetic_judge`), costing none.
  Its draws come from a `torch.Generator` seeded from the run's seed and what it is asked (the
  prompts and responses), so a run is reproducible, a resumed run draws what the uninterrupted
  one drew, and how often one evaluates never changes a training round's answers; like a model
  judge, it answers the same questions about the same responses the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.data.answers import reference_quality
from pad_lightning.lm.judge import DEFAULT_OPTION_TEMPLATE, DEFAULT_TEMPLATE, question_log_probs
from pad_lightning.ranking import synthetic_judge
from pad_lightning.ranking.selection import selection_from
from pad_lightning.ranking.synthetic_judge import SyntheticJudge
from pad_lightning.runtime.errors import ConfigError

JUDGES = ("teacher", "synthetic")


@dataclass
class CalibrationConfig:
    """`name`: none | mcq. `alpha` weights log p_sel (paper formula); `mode`: pairwise | listwise;
    `debias` asks both orders (pairwise) or every cyclic rotation (listwise) and averages.
    `judge`: teacher | synthetic (then `synthetic` holds its accuracy, position bias and
    confidence); `seed` (the run's) seeds the synthetic judge's draws."""

    name: str = "mcq"
    alpha: float = 0.8
    mode: str = "pairwise"
    debias: bool = True
    template: str = DEFAULT_TEMPLATE
    option_template: str = DEFAULT_OPTION_TEMPLATE
    judge: str = "teacher"
    synthetic: SyntheticJudge = field(default_factory=SyntheticJudge)
    seed: int = 0

    def asks(self) -> bool:
        """Whether a judge is asked MCQs at all (alpha = 0: t = r_T exactly)."""
        return self.name == "mcq" and self.alpha > 0

    def needs_references(self) -> bool:
        """Whether the rollouts need the prompts' reference answers (the synthetic judge)."""
        return self.asks() and self.judge == "synthetic"


def question_text(prompt) -> str:
    """The question an MCQ restates: the prompt, or a chat prompt's last message."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def judge_seed(seed: int, questions: list[str], responses: list[list[str]]) -> int:
    """A 63-bit seed from the run's seed and what the judge is asked (blake2b of both)."""
    digest = hashlib.blake2b(json.dumps([seed, questions, responses]).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def answers(
    calibration: CalibrationConfig,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    responses: list[list[str]],
    orders: list[tuple[int, ...]],
    references: list | None = None,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """The judge's option log-probabilities [P, Q, k] on the option `orders` of every prompt's
    responses, and the teacher tokens it cost (0 for the synthetic judge)."""
    questions = [question_text(p) for p in prompts]
    if calibration.judge == "synthetic":
        if references is None or any(r is None for r in references):
            raise ConfigError(
                "calibration.judge=synthetic: needs a reference answer for every prompt (its "
                "answers are drawn from the true quality q); use data=toy or "
                "calibration.judge=teacher"
            )
        q = reference_quality(responses, references)
        generator = torch.Generator().manual_seed(
            judge_seed(calibration.seed, questions, responses)
        )
        return synthetic_judge.option_log_probs(q, orders, calibration.synthetic, generator), 0
    return question_log_probs(
        teacher,
        teacher_tokenizer,
        questions,
        responses,
        orders,
        calibration.template,
        max_tokens,
        autocast_dtype,
        calibration.option_template,
    )


def selection(
    calibration: CalibrationConfig,
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    responses: list[list[str]],
    references: list | None = None,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """log p_sel [P, n] of every response, and the teacher tokens it cost: the questions of
    `calibration.mode` and `debias`, answered by the judge, combined by `log_selection`."""
    return selection_from(
        lambda orders: answers(
            calibration,
            teacher,
            teacher_tokenizer,
            prompts,
            responses,
            orders,
            references,
            max_tokens,
            autocast_dtype,
        ),
        calibration.mode,
        len(responses[0]),
        calibration.debias,
    )
