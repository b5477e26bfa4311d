"""Did training help? The verdict of one run on its held-out headline metric, before vs after.

A run whose student got worse must say so where a user looks: its last terminal lines, its
summary.json and an MLflow tag (`pad.outcome`) that a run list or a sweep can filter on
(`tags.pad.outcome = 'worse'`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The first of these that a run measured decides (exact match needs reference answers; quality
# too; the teacher's reward of the student's answers is always there).
HEADLINE = ("exact_match", "quality", "teacher_reward")
# Changes smaller than this (absolute, in the metric's units) count as unchanged: 0.01 is 2.6
# test problems of the default 256 for exact match.
TOLERANCE = 0.01
VERDICTS = ("improved", "unchanged", "worse")


@dataclass(frozen=True)
class Outcome:
    verdict: str  # one of VERDICTS
    metric: str
    before: float
    after: float

    def line(self) -> str:
        """One line for the end of a run."""
        change = f"{self.metric} {self.before:.4f} -> {self.after:.4f} ({self.delta:+.4f})"
        if self.verdict == "worse":
            return f"outcome: WORSE: the student got worse on held-out {change}"
        if self.verdict == "improved":
            return f"outcome: improved: held-out {change}"
        return f"outcome: unchanged (within {TOLERANCE:g}): held-out {change}"

    @property
    def delta(self) -> float:
        return self.after - self.before


def outcome(
    before: Mapping[str, float], after: Mapping[str, float], tolerance: float = TOLERANCE
) -> Outcome | None:
    """The verdict on the first headline metric measured both before and after; None if none."""
    for metric in HEADLINE:
        if metric in before and metric in after:
            b, a = float(before[metric]), float(after[metric])
            verdict = "worse" if a - b < -tolerance else "improved" if a - b > tolerance else ""
            return Outcome(verdict or "unchanged", metric, b, a)
    return None
