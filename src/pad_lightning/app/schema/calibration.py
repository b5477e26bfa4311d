"""The `calibration` group (conf/calibration/): MCQ selection probabilities mixed into the
teacher's scores."""

from __future__ import annotations

from dataclasses import dataclass

from pad_lightning.app.schema.values import flag, number, one_of, require
from pad_lightning.lm.judge import DEFAULT_OPTION_TEMPLATE, DEFAULT_TEMPLATE, LETTERS
from pad_lightning.ranking.selection import MODES

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

    def asks(self) -> bool:
        """Whether the teacher is asked MCQ questions at all."""
        return self.name == "mcq" and self.alpha > 0

    def check(self, listed: int) -> None:
        """Own keys; `listed` is the number of responses one listwise question would list."""
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
        if self.asks() and self.mode == "listwise":
            require(
                listed <= len(LETTERS),
                f"calibration.mode=listwise: one question lists all {listed} responses, but "
                f"there are only {len(LETTERS)} option letters; use calibration.mode=pairwise",
            )
