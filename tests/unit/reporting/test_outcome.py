"""The verdict of a run on its held-out headline metric (reporting.outcome) and how it is shown."""

from __future__ import annotations

import dataclasses

import pytest

from pad_lightning.app.experiment import console, report
from pad_lightning.reporting.outcome import TOLERANCE, Outcome, outcome


@pytest.mark.parametrize(
    ("before", "after", "verdict", "metric"),
    [
        # the headline command's collapse: exact match 0.414 -> 0.000
        (
            {"exact_match": 0.414, "quality": 0.82},
            {"exact_match": 0.0, "quality": 0.34},
            "worse",
            "exact_match",
        ),
        ({"exact_match": 0.414}, {"exact_match": 0.855}, "improved", "exact_match"),
        (
            {"exact_match": 0.414},
            {"exact_match": 0.414 - TOLERANCE / 2},
            "unchanged",
            "exact_match",
        ),
        # prompt sets without references: no exact match or quality, the teacher's reward decides
        ({"teacher_reward": -1.5}, {"teacher_reward": -5.8}, "worse", "teacher_reward"),
        (
            {"quality": 0.8, "teacher_reward": -1.0},
            {"quality": 0.9, "teacher_reward": -2.0},
            "improved",
            "quality",
        ),
    ],
)
def test_the_first_headline_metric_decides(before, after, verdict, metric):
    result = outcome(before, after)
    assert (result.verdict, result.metric) == (verdict, metric)
    assert result.delta == pytest.approx(after[metric] - before[metric])


def test_no_headline_metric_no_verdict():
    assert outcome({"loss": 0.2}, {"loss": 0.1}) is None


def _summary(before: dict, after: dict) -> dict:
    summary = {
        "before": before,
        "after": after,
        "timings": {"fit_s": 1.0, "total_s": 2.0},
        "mlflow_run_id": "abc",
    }
    summary["outcome"] = dataclasses.asdict(outcome(before, after))
    return summary


def test_a_worse_student_is_the_last_line_of_the_report():
    before = {"exact_match": 0.4141, "quality": 0.8175}
    after = {"exact_match": 0.0, "quality": 0.3400}
    with console.capture() as captured:
        report(_summary(before, after), title="ppd: held-out test metrics")
    lines = captured.get().strip().splitlines()
    assert "ppd: held-out test metrics" in lines[0]
    assert lines[-1] == (
        "outcome: WORSE: the student got worse on held-out exact_match 0.4141 -> 0.0000 (-0.4141)"
    )


def test_outcome_round_trips_through_the_summary():
    verdict = outcome({"exact_match": 0.4}, {"exact_match": 0.9})
    assert Outcome(**dataclasses.asdict(verdict)) == verdict
    assert verdict.line() == "outcome: improved: held-out exact_match 0.4000 -> 0.9000 (+0.5000)"
