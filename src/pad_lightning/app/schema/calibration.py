"""The `calibration` group (conf/calibration/): MCQ selection probabilities mixed into the
teacher's scores; who answers the MCQs (`judge`, and the `synthetic` judge's knobs,
`ranking.synthetic_judge.SyntheticJudge`, which owns their defaults), and the judge check before
training (`check`, `training.judge_check.CheckConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pad_lightning.app.schema.values import flag, number, one_of, require
from pad_lightning.lm.judge import DEFAULT_OPTION_TEMPLATE, DEFAULT_TEMPLATE, LETTERS
from pad_lightning.ranking.selection import MODES
from pad_lightning.ranking.synthetic_judge import SyntheticJudge
from pad_lightning.training.calibration import JUDGES
from pad_lightning.training.judge_check import CheckConfig

CALIBRATIONS = ("none", "mcq")


@dataclass
class CalibrationGroup:
    """t = (1 - alpha) r_T + alpha log p_sel; conf/calibration/mcq.yaml explains each key."""

    name: str = "mcq"
    alpha: float = 0.0  # 0: likelihood only, no MCQ passes (the toy teacher's judge is weak)
    mode: str = "listwise"
    debias: bool = True
    template: str = DEFAULT_TEMPLATE
    option_template: str = DEFAULT_OPTION_TEMPLATE
    judge: str = "teacher"  # teacher | synthetic (answers from the true quality q, toy world)
    synthetic: SyntheticJudge = field(default_factory=SyntheticJudge)
    check: CheckConfig = field(default_factory=CheckConfig)

    def asks(self) -> bool:
        """Whether a judge is asked MCQ questions at all."""
        return self.name == "mcq" and self.alpha > 0

    def check_keys(self, listed: int) -> None:
        """Own keys; `listed` is the number of responses one listwise question would list. (Not
        `check`, as the other groups' method is called: that name is the judge check's key.)"""
        one_of(self.name, "calibration.name", CALIBRATIONS)
        number(self.alpha, "calibration.alpha", low=0, high=1)
        one_of(self.mode, "calibration.mode", MODES)
        flag(self.debias, "calibration.debias")
        require(
            isinstance(self.template, str)
            and "{question}" in self.template
            and "{options}" in self.template,
            "calibration.template: must contain {question} and {options}",
        )
        option = self.option_template
        require(
            isinstance(option, str) and "{letter}" in option and "{response}" in option,
            "calibration.option_template: must contain {letter} and {response} (and may "
            "{question})",
        )
        one_of(self.judge, "calibration.judge", JUDGES)
        synthetic = self.synthetic
        number(synthetic.accuracy, "calibration.synthetic.accuracy", low=0.5, high=1)
        number(synthetic.position_bias, "calibration.synthetic.position_bias", low=0, high=1)
        number(
            synthetic.confidence,
            "calibration.synthetic.confidence",
            low=0.5,
            high=1,
            low_open=True,
            high_open=True,
        )
        number(self.check.prompts, "calibration.check.prompts", integer=True, low=0)
        number(self.check.gap, "calibration.check.gap", low=0, high=1, low_open=True)
        flag(self.check.refuse, "calibration.check.refuse")
        if self.asks() and self.mode == "listwise":
            require(
                listed <= len(LETTERS),
                f"calibration.mode=listwise: one question lists all {listed} responses, but "
                f"there are only {len(LETTERS)} option letters; use calibration.mode=pairwise",
            )
