"""The judge check as a phase of a run (app.experiment.check_judge): when it runs, the default
world's judge refused with its line, the override, a synthetic judge of known accuracy passing
or refused, and the synthetic judge refused without reference answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pad_lightning.app.checks import check
from pad_lightning.app.configs import config_dir
from pad_lightning.app.experiment import Inputs, _check_judge_references, check_judge
from pad_lightning.app.models import load_pair
from pad_lightning.data.problems import build_problems
from pad_lightning.data.prompts import PromptRecord
from pad_lightning.runtime.errors import ConfigError


def _config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"logger.tracking_uri=sqlite:///{tmp_path}/m.db", *overrides]
        )
    return check(cfg)


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The default toy world's problems and zoo models (the zoo cache `make run` uses: built on
    first use, minutes, then loaded in a second)."""
    cfg = _config(tmp_path_factory.mktemp("world"))
    train, val, test = build_problems(cfg.data)
    return (train, val, test, *load_pair(cfg.model))


def _inputs(world) -> Inputs:
    return Inputs(*world, ckpt_path=None)


def _interval(line: str, name: str) -> tuple[float, float, float]:
    value, low, high = re.search(rf"{name} ([\d.]+) \[([\d.]+), ([\d.]+)\]", line).groups()
    return float(value), float(low), float(high)


@pytest.mark.slow
def test_the_default_worlds_judge_is_refused(default_world, tmp_path):
    """The zoo teacher answers by position: accuracy exactly 1/2 on graded pairs, agreement 0
    across orders. The headline command `loss=ppd n=8 calibration.alpha=0.8` stops here."""
    cfg = _config(tmp_path, "loss=ppd", "n=8", "calibration.alpha=0.8")
    with pytest.raises(ConfigError) as err:
        check_judge(cfg, _inputs(default_world), resuming=False)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(
        "calibration.alpha=0.8 with calibration.judge=teacher: the judge is at chance on the "
        "initial student's samples of 32 validation prompts x 8: accuracy 0.500 ["
    )
    assert _interval(line, "accuracy")[0] == 0.5 and _interval(line, "order agreement")[0] == 0
    assert "accuracy's 95% interval does not lie above 0.5" in line
    assert line.endswith("or calibration.check.refuse=false to train anyway")


@pytest.mark.slow
def test_the_override_lets_a_refused_judge_train(default_world, tmp_path, capsys):
    cfg = _config(tmp_path, "calibration.alpha=0.8", "calibration.check.refuse=false")
    report = check_judge(cfg, _inputs(default_world), resuming=False)
    assert report.at_chance()
    assert report.params()["judge/verdict"] == "at chance (trained anyway)"
    out = capsys.readouterr().out
    assert "judge check (teacher judge, 32 validation prompts x 4" in out
    assert "training anyway (calibration.check.refuse=false)" in out


@pytest.mark.slow
@pytest.mark.parametrize("accuracy", [0.9, 0.5])
def test_a_synthetic_judge_passes_at_090_and_is_refused_at_050(default_world, tmp_path, accuracy):
    """On the initial student's real samples the check measures the synthetic judge's set
    accuracy (within its interval) and decides by it."""
    overrides = [
        "calibration.alpha=0.8",
        "calibration.judge=synthetic",
        f"calibration.synthetic.accuracy={accuracy}",
        "calibration.check.prompts=64",
    ]
    cfg = _config(tmp_path, *overrides)
    if accuracy == 0.5:
        with pytest.raises(
            ConfigError, match="calibration.judge=synthetic: the judge is at chance"
        ):
            check_judge(cfg, _inputs(default_world), resuming=False)
        return
    report = check_judge(cfg, _inputs(default_world), resuming=False)
    assert not report.at_chance() and report.tokens == 0
    low, high = report.accuracy.interval()
    assert low <= accuracy <= high


@pytest.mark.parametrize(
    ("overrides", "resuming"),
    [
        (["calibration.alpha=0"], False),  # t = r_T: no judge
        (["calibration=none", "calibration.alpha=0.8"], False),
        (["calibration.alpha=0.8", "calibration.check.prompts=0"], False),  # switched off
        (["calibration.alpha=0.8", "loss=sft"], False),  # trains on gold, not on scores
        (["calibration.alpha=0.8"], True),  # checked when the run started
    ],
)
def test_the_check_runs_only_before_training_on_calibrated_scores(tmp_path, overrides, resuming):
    """Nothing is measured (the models are never touched) where the judge does not matter."""
    cfg = _config(tmp_path, *overrides)
    inputs = Inputs([object()], [object()], [], None, None, None, None, None)
    assert check_judge(cfg, inputs, resuming=resuming) is None


def test_the_synthetic_judge_needs_reference_answers(tmp_path):
    cfg = _config(tmp_path, "calibration.alpha=0.8", "calibration.judge=synthetic")
    toy = dict(zip(("train", "val", "test"), build_problems(cfg.data), strict=True))
    _check_judge_references(cfg, toy)  # the toy world has them
    prompts = {"train": [PromptRecord("Say hi.", "p1")], "val": [], "test": []}
    with pytest.raises(ConfigError) as err:
        _check_judge_references(cfg, prompts)
    assert str(err.value).startswith("calibration.judge=synthetic: draws its answers")
    assert "1 of 1 train prompts" in str(err.value) and "\n" not in str(err.value)
    _check_judge_references(_config(tmp_path, "calibration.judge=synthetic"), prompts)  # alpha 0
