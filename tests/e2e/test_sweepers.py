"""Sweeps on existing launchers and sweepers (the `sweep` extra): Optuna over PAD's knobs and
submitit's local launcher, each as one MLflow parent run with its jobs nested under it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import subprocess_env

from pad_lightning.app.main import optimized_value

pytestmark = pytest.mark.slow


def _sweep(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "--multirun",
        "experiment=smoke",
        f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"hydra.sweep.dir={tmp}/sweep",
        "logger.log_student=false",
        *overrides,
    ]
    return subprocess.run(
        cmd, cwd=tmp, env=subprocess_env(tmp), capture_output=True, text=True, timeout=900
    )


def _family(tmp: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    sweep = (tmp / "sweep").resolve()
    parent_id = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return client, sweep, parent, children


def test_optuna_sweep_of_three_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = _sweep(tmp_path, "hydra/sweeper=pad_optuna", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, sweep, parent, children = _family(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep: optuna(loss.beta_teacher, trainer.optim.lr, n)")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    # each trial drew its own point of the search space and returned its last validation EM
    points = {
        tuple(c.data.params[k] for k in ("loss.beta_teacher", "trainer.optim.lr", "n"))
        for c in children
    }
    assert len(points) == 3
    values = {}
    for summary_file in sweep.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        values[summary["mlflow_run_id"]] = summary["val"]["exact_match"]
    assert set(values) == {c.info.run_id for c in children}
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(values.values()))
    assert set(results["best_params"]) == {
        "loss.beta_teacher",
        "trainer.optim.lr",
        "n",
    }
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "optimization_results.yaml" in logged
    # the parent names the best trial as Optuna does (its value, its parameters)
    assert parent.data.metrics["best/val/exact_match"] == pytest.approx(results["best_value"])
    for key, value in results["best_params"].items():
        assert float(parent.data.params[f"best.{key}"]) == pytest.approx(float(value)), key
    assert "the sweep's runs, best val/exact_match first: http" in proc.stdout


def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _sweep(tmp_path, "hydra/launcher=pad_local", "trainer.max_epochs=1", "n=2,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, sweep, parent, children = _family(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["n=2", "n=4"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert (sweep / ".submitit").is_dir()  # the jobs ran through submitit, in other processes
    assert len(list(sweep.glob("*/summary.json"))) == 2


def test_optimized_value():
    summary = {"val": {"exact_match": 0.25}, "after": {"quality": 0.5}, "delta": {}}
    assert optimized_value(summary, "val/exact_match") == 0.25
    assert optimized_value(summary, "after/quality") == 0.5
    assert optimized_value(summary, None) is None
    assert optimized_value(summary, "delta/quality") is None  # not measured: None, not 0
    assert optimized_value({"before": {}}, "val/exact_match") is None


def test_an_unmeasured_optimized_metric_says_why_in_a_sweep_only(capsys):
    """A single run has no use for the value: it ends without a line about it. In a sweep the
    line names the cause: no validation at all, or prompts without reference answers."""
    no_refs = {"val": {"teacher_reward": -1.0, "loss": 0.1}}
    assert optimized_value(no_refs, "val/exact_match", in_sweep=False) is None
    assert capsys.readouterr().err == ""
    assert optimized_value(no_refs, "val/exact_match") is None
    assert capsys.readouterr().err == (
        "optimized_metric=val/exact_match: not measured by this run (it needs reference "
        "answers, which these prompts do not have); measured: loss, teacher_reward\n"
    )
    assert optimized_value({"val": {}}, "val/exact_match") is None
    assert "trainer.val_every_n_epochs" in capsys.readouterr().err


def test_bad_optimized_metric_is_one_config_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            "experiment=smoke",
            "optimized_metric=test/em",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "config error: optimized_metric='test/em': valid: null, val/<metric>, after/<metric> or "
        "delta/<metric> (e.g. val/exact_match)"
    )
