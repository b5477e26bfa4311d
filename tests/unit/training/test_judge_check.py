"""The judge check (pad_lightning.training.judge_check): on a synthetic judge it measures the set
accuracy and agreement, passes an accurate judge, flags one at chance, and leaves the run's
random stream untouched."""

from __future__ import annotations

import math
import random

import pytest
import torch

from pad_lightning.data.tasks import corrupt, sample_problems
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.ranking.judge_accuracy import Rate
from pad_lightning.ranking.synthetic_judge import SyntheticJudge
from pad_lightning.training.calibration import CalibrationConfig
from pad_lightning.training.judge_check import (
    CheckConfig,
    JudgeReport,
    judge_report,
    measure_judge,
)


def _synthetic(accuracy: float, position_bias: float = 0.0, seed: int = 0) -> CalibrationConfig:
    return CalibrationConfig(
        alpha=0.8,
        judge="synthetic",
        synthetic=SyntheticJudge(accuracy, position_bias),
        seed=seed,
    )


def _samples(prompts: int, n: int = 4, seed: int = 0):
    """Toy problems with n corruptions of each reference (exact, one edit, ..., repeats)."""
    problems = sample_problems(["reverse"], "val", prompts, 0)
    rng = random.Random(seed)
    texts = [[corrupt(p.reference, rng, "abcdefghij") for _ in range(n)] for p in problems]
    return [p.prompt for p in problems], texts, [p.reference for p in problems]


def _report(cal: CalibrationConfig, prompts: int = 128, references: bool = True):
    questions, texts, refs = _samples(prompts)
    refs = refs if references else [None] * len(refs)
    return judge_report(cal, None, None, questions, texts, refs, gap=0.2)


@pytest.mark.parametrize("accuracy", [0.55, 0.7, 0.85, 1.0])
def test_the_check_measures_the_synthetic_judges_set_accuracy(accuracy):
    """Both orders of every graded pair: accuracy within 4 standard errors of the set one (each
    order right with probability `accuracy`, independently); order agreement, over pairs of
    different q, a^2 + (1 - a)^2."""
    report = _report(_synthetic(accuracy, seed=1), prompts=600)
    m = report.accuracy.trials
    assert m > 500
    se = math.sqrt(accuracy * (1 - accuracy) / (2 * m))
    assert abs(report.accuracy.value - accuracy) <= 4 * se + 1e-12
    agree = accuracy**2 + (1 - accuracy) ** 2
    se = math.sqrt(agree * (1 - agree) / report.agreement.trials)
    assert abs(report.agreement.value - agree) <= 4 * se + 1e-12
    assert report.tokens == 0


def test_an_accurate_judge_passes_and_one_at_chance_does_not():
    good = _report(_synthetic(0.9))
    assert not good.at_chance() and good.deciding()[0] == "accuracy"
    assert good.line().endswith(": above chance")
    chance = _report(_synthetic(0.5))
    assert chance.at_chance()
    low, high = chance.accuracy.interval()
    assert low <= 0.5 <= high
    refusal = chance.refusal(0.8)
    assert "\n" not in refusal
    assert refusal.startswith("calibration.alpha=0.8 with calibration.judge=synthetic: the judge")
    for part in (
        "accuracy 0.",
        "graded pairs",
        "order agreement",
        "calibration.check.refuse=false",
    ):
        assert part in refusal
    assert "training anyway (calibration.check.refuse=false)" in chance.line()


def test_a_positional_judge_never_agrees_and_scores_exactly_one_half():
    report = _report(_synthetic(0.9, position_bias=1.0))
    assert report.agreement.value == 0 and report.agreement.trials > 100
    assert report.accuracy.value == 0.5
    assert report.at_chance()


def test_without_references_agreement_decides():
    """Prompt sets have no reference answers: the verdict rests on order agreement."""

    def report(agree: float, pairs: int) -> JudgeReport:
        return JudgeReport("teacher", 32, 4, 0.2, Rate(agree, pairs), None, 100, 1.0)

    assert report(82, 100).deciding()[0] == "order agreement"
    assert "accuracy" not in report(82, 100).measured()
    assert not report(82, 100).at_chance()
    assert report(55, 100).at_chance()  # [0.452, 0.643]
    assert report(0, 100).at_chance()  # a positional judge
    assert "order agreement's 95% interval" in report(0, 100).refusal(0.8)


def test_metrics_and_params_carry_the_numbers_and_the_verdict():
    report = _report(_synthetic(0.9))
    metrics = report.metrics()
    assert metrics["judge/accuracy"] == report.accuracy.value
    assert (metrics["judge/accuracy_low"], metrics["judge/accuracy_high"]) == (
        report.accuracy.interval()
    )
    assert metrics["judge/accuracy_pairs"] == report.accuracy.trials
    assert metrics["judge/agreement_pairs"] == report.agreement.trials
    assert metrics["judge/at_chance"] == 0.0
    assert report.params()["judge/verdict"] == "above chance"
    # its cost is a run total (system/run/): system/time/ holds per-epoch parts, which the
    # epoch-time figure stacks
    assert metrics["system/run/judge_check_s"] == report.seconds
    assert metrics["system/run/judge_check_tokens"] == report.tokens
    assert all(k.startswith(("judge/", "system/run/")) for k in metrics)
    assert all(k.startswith("judge/") for k in report.params())


def test_measure_judge_samples_from_its_own_stream(tok, model, teacher):
    """The check samples the student on the first `prompts` problems from a seeded stream of its
    own: the global random state is unchanged, and two checks measure the same."""
    problems = sample_problems(["reverse"], "val", 12, 0)
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0)
    check = CheckConfig(prompts=5, gap=0.05)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = measure_judge(model, tok, teacher, tok, problems, 4, sampling, _synthetic(0.9), check)
    assert torch.equal(torch.get_rng_state(), state)
    again = measure_judge(model, tok, teacher, tok, problems, 4, sampling, _synthetic(0.9), check)
    assert (first.prompts, first.n) == (5, 4)
    assert (first.agreement, first.accuracy) == (again.agreement, again.accuracy)


def test_measure_judge_asks_the_teacher_when_it_judges(tok, model, teacher):
    """The teacher judge: two-option questions in both orders, costing teacher tokens."""
    problems = sample_problems(["reverse"], "val", 3, 0)
    cal = CalibrationConfig(alpha=0.8, mode="listwise")
    report = measure_judge(
        model,
        tok,
        teacher,
        tok,
        problems,
        3,
        SamplingConfig(max_new_tokens=6, temperature=1.0),
        cal,
        CheckConfig(prompts=3),
    )
    assert report.judge == "teacher" and report.tokens > 0
    assert report.agreement.trials <= 3 * 3 and report.accuracy is not None


def test_with_no_graded_pair_agreement_decides_and_nothing_unmeasured_is_logged():
    """A weak student's samples may all be far from the reference (no pair differs by the
    gap): accuracy is not measured, agreement decides, and no NaN reaches MLflow."""
    report = JudgeReport("teacher", 8, 4, 0.2, Rate(0.0, 48), Rate(0.0, 0), 100, 1.0)
    assert report.deciding()[0] == "order agreement" and report.at_chance()
    assert "accuracy not measured (no graded pairs" in report.measured()
    metrics = report.metrics()
    assert metrics["judge/accuracy_pairs"] == 0 and "judge/accuracy" not in metrics
    assert metrics["judge/agreement"] == 0 and metrics["judge/agreement_low"] == 0
    nothing = JudgeReport("teacher", 8, 4, 0.2, Rate(0.0, 0), Rate(0.0, 0), 0, 1.0)
    assert "nothing was measured (raise calibration.check.prompts)" in nothing.refusal(0.8)
