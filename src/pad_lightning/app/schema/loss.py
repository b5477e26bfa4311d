"""The `loss` group (conf/loss/): the objective and its knobs."""

from __future__ import annotations

from dataclasses import dataclass

from pad_lightning.app.schema.values import number, one_of, require
from pad_lightning.ranking.baselines import PAIR_CHOICES
from pad_lightning.ranking.losses import DIVERGENCES
from pad_lightning.training.objectives import LOSS_KNOBS, OBJECTIVES


@dataclass
class LossGroup:
    """`name` picks an objective of `training.objectives.OBJECTIVES`. The objective-specific
    knobs (`LOSS_KNOBS`) are null unless its conf/loss/<name>.yaml sets them: a null knob is not
    passed, so the objective keeps `LossConfig`'s default for it."""

    name: str = "ppd"
    divergence: str | None = None  # loss=ppd only (conf/loss/ppd.yaml: jsd)
    beta_student: float = 1.0  # PAD: student scores s_S = beta_student * r_S
    beta_teacher: float = 1.0  # teacher scores s_T = beta_teacher * t (every loss's statistics)
    beta: float | None = None
    gamma: float | None = None
    pairs: str | None = None
    sft_weight: float | None = None
    jsd_beta: float | None = None
    temperature: float | None = None

    def knobs(self) -> dict:
        """The objective-specific knobs this config sets (`LOSS_KNOBS`, null ones left out)."""
        return {k: getattr(self, k) for k in LOSS_KNOBS if getattr(self, k) is not None}

    def check(self) -> None:
        """The objective exists; a divergence only for ppd; each knob in its range."""
        require(
            self.name in OBJECTIVES,
            f"loss.name={self.name!r}: unknown loss; valid: {', '.join(OBJECTIVES)}",
        )
        if self.name == "ppd":
            one_of(self.divergence, "loss.divergence", DIVERGENCES)
        else:
            require(
                self.divergence is None,
                f"loss.divergence={self.divergence!r}: only loss=ppd has a divergence; "
                f"use loss=ppd or drop the override",
            )
        number(self.beta_student, "loss.beta_student", low=0, low_open=True)
        number(self.beta_teacher, "loss.beta_teacher", low=0, low_open=True)
        for key in ("beta", "temperature"):
            if getattr(self, key) is not None:
                number(getattr(self, key), f"loss.{key}", low=0, low_open=True)
        for key in ("gamma", "sft_weight"):
            if getattr(self, key) is not None:
                number(getattr(self, key), f"loss.{key}", low=0)
        if self.jsd_beta is not None:
            number(self.jsd_beta, "loss.jsd_beta", low=0, high=1)
        if self.pairs is not None:
            one_of(self.pairs, "loss.pairs", PAIR_CHOICES)
