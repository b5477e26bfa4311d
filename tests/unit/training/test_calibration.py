"""Who answers a rollout's MCQs (pad_lightning.training.calibration): the synthetic judge goes
through the same questions, `log_selection` and mix as the teacher, costs no teacher tokens and
draws reproducibly."""

from __future__ import annotations

import random

import pytest
import torch

from pad_lightning.data.answers import reference_quality
from pad_lightning.data.tasks import corrupt, sample_problems
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.ranking import synthetic_judge
from pad_lightning.ranking.selection import LOG_P_FLOOR, log_selection, mix, questions_for
from pad_lightning.ranking.synthetic_judge import SyntheticJudge
from pad_lightning.runtime.errors import ConfigError
from pad_lightning.training.calibration import CalibrationConfig, judge_seed, selection
from pad_lightning.training.evaluation import EvalConfig
from pad_lightning.training.module import LossConfig, OptimConfig, PADModule
from pad_lightning.training.rollout import Extras, collect


def _world(prompts: int = 6, n: int = 4, seed: int = 0):
    """Toy problems and n corruptions of each reference (q from 0 to 1, repeats included)."""
    problems = sample_problems(["reverse"], "val", prompts, 0)
    rng = random.Random(seed)
    texts = [[corrupt(p.reference, rng, "abcdefghij") for _ in range(n)] for p in problems]
    return [p.prompt for p in problems], texts, [p.reference for p in problems]


def _synthetic(mode="pairwise", debias=True, seed=0, **judge) -> CalibrationConfig:
    return CalibrationConfig(
        alpha=0.8,
        mode=mode,
        debias=debias,
        judge="synthetic",
        synthetic=SyntheticJudge(**judge),
        seed=seed,
    )


@pytest.mark.parametrize(
    ("mode", "debias"), [("pairwise", True), ("pairwise", False), ("listwise", True)]
)
def test_synthetic_selection_is_log_selection_of_its_answers(mode, debias):
    """log p_sel = log_selection of the synthetic judge's option log-probs on the mode's orders,
    drawn from the generator seeded by the run's seed and the questions; no teacher tokens."""
    prompts, texts, refs = _world()
    cal = _synthetic(mode, debias, accuracy=0.8, position_bias=0.1)
    log_p_sel, tokens = selection(cal, None, None, prompts, texts, refs)
    orders = questions_for(mode, 4, debias)
    generator = torch.Generator().manual_seed(judge_seed(0, prompts, texts))
    logp = synthetic_judge.option_log_probs(
        reference_quality(texts, refs), orders, cal.synthetic, generator
    )
    expected = log_selection(logp, orders, mode, 4, debias).clamp_min(LOG_P_FLOOR)
    torch.testing.assert_close(log_p_sel, expected)
    assert tokens == 0


def test_synthetic_draws_are_reproducible_and_follow_the_seed():
    prompts, texts, refs = _world(20)
    a, _ = selection(_synthetic(seed=3, accuracy=0.7), None, None, prompts, texts, refs)
    b, _ = selection(_synthetic(seed=3, accuracy=0.7), None, None, prompts, texts, refs)
    c, _ = selection(_synthetic(seed=4, accuracy=0.7), None, None, prompts, texts, refs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_synthetic_judge_needs_reference_answers():
    prompts, texts, refs = _world(2)
    with pytest.raises(ConfigError) as err:
        selection(_synthetic(), None, None, prompts, texts, [refs[0], None])
    assert "calibration.judge=synthetic" in str(err.value) and "\n" not in str(err.value)


def test_collect_with_the_synthetic_judge(tok, model, teacher):
    """A rollout calibrated by the synthetic judge: t = mix(r_T, log p_sel), log p_sel what
    `selection` gives on the samples, tokens["calibration"] = 0, its seconds kept."""
    problems = sample_problems(["reverse"], "val", 3, 0)
    prompts, refs = [p.prompt for p in problems], [p.reference for p in problems]
    cal = _synthetic(accuracy=0.9)
    torch.manual_seed(0)
    roll = collect(
        model,
        tok,
        teacher,
        tok,
        prompts,
        3,
        SamplingConfig(max_new_tokens=6),
        cal,
        extras=Extras(references=refs),
    )
    expected, _ = selection(cal, None, None, prompts, roll.texts, refs)
    torch.testing.assert_close(roll.log_p_sel, expected)
    torch.testing.assert_close(roll.teacher_scores, mix(roll.teacher_rewards, expected, 0.8))
    assert roll.tokens["calibration"] == 0 and roll.seconds["calibration"] >= 0


def test_the_module_passes_references_to_a_synthetic_judge_only(tok, make_model):
    student, teacher = make_model(0), make_model(1)

    def extras_of(cal):
        evaluation = EvalConfig(calibration=cal)
        module = PADModule(student, teacher, tok, tok, LossConfig(), OptimConfig(), evaluation, 1)
        return module.extras(["a", "b"]).references

    assert extras_of(_synthetic()) == ["a", "b"]
    assert extras_of(CalibrationConfig(alpha=0.8)) is None  # the teacher judges: not needed
    assert extras_of(CalibrationConfig(alpha=0.0, judge="synthetic")) is None  # no MCQs
