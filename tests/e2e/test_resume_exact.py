"""Kill anywhere, resume, same answer; and the same seed twice gives the same metrics (CPU).

A run is killed with SIGKILL at exact places (`PAD_LIGHTNING_FAULT=<point>:<k>`, see
`pad_lightning.runtime.interrupts`): during a rollout, during an optimizer step, while a checkpoint is
being written, after a checkpoint is written but before its metrics are committed to MLflow, and
before the final evaluation. Each is resumed, and the finished MLflow run must
hold exactly the metric histories of an uninterrupted run with the same seed: every step once,
every value equal (timings, throughput and memory excepted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow
UNTIMED = ("time/", "throughput/", "memory/", "system/")
EPOCHS = 3  # smoke: 2 optimizer steps per epoch, validation every 2 epochs


def rollout_table(root: Path, run_dir: Path) -> list[dict]:
    from pad_lightning.reporting.figures import rollouts_from_mlflow

    run_id = json.loads((run_dir / "run_state.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    return rollouts_from_mlflow(client, run_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shared tmp folder: one zoo cache and one mlflow.db for every run of this module."""
    return tmp_path_factory.mktemp("resume-exact")


def env(root: Path, fault: str | None = None) -> dict:
    from conftest import subprocess_env

    out = subprocess_env(root)
    out.pop("PAD_LIGHTNING_FAULT", None)
    if fault:
        out["PAD_LIGHTNING_FAULT"] = fault
    return out


def launch(root: Path, run_dir: Path, *extra: str, fault: str | None = None):
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "experiment=smoke",
        f"trainer.max_epochs={EPOCHS}",
        f"logger.tracking_uri=sqlite:///{root}/mlflow.db",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    return subprocess.run(
        cmd, cwd=root, env=env(root, fault), capture_output=True, text=True, timeout=600
    )


def histories(root: Path, run_dir: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    run_id = json.loads((run_dir / "run_state.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith(UNTIMED):
            continue
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return run.info.status, out


@pytest.fixture(scope="module")
def reference(world):
    proc = launch(world, world / "reference")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, metrics = histories(world, world / "reference")
    assert status == "FINISHED"
    return metrics


def test_same_seed_twice_gives_identical_metrics(world, reference):
    proc = launch(world, world / "again")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, again = histories(world, world / "again")
    assert again == reference
    assert len(reference["train/loss"]) == EPOCHS * 2
    # and a different seed does not (the comparison can see a difference)
    proc = launch(world, world / "seed1", "seed=1")
    _, other = histories(world, world / "seed1")
    assert other["train/loss"] != reference["train/loss"]


@pytest.mark.parametrize(
    "fault",
    ["rollout:3", "step:4", "checkpoint_write:3", "checkpoint_saved:2", "final_eval:1"],
    ids=[
        "during-rollout",
        "during-step",
        "during-checkpoint-write",
        "before-metrics-commit",
        "during-final-eval",
    ],
)
def test_killed_anywhere_resumes_to_the_uninterrupted_result(world, reference, fault):
    run_dir = world / fault.replace(":", "-")
    killed = launch(world, run_dir, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    status, _ = histories(world, run_dir)
    assert status == "RUNNING"  # a crashed run never looks finished
    assert not (run_dir / "summary.json").exists()

    resumed = launch(world, run_dir, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status, metrics = histories(world, run_dir)
    assert status == "FINISHED"
    assert sorted(metrics) == sorted(reference)
    for key, points in reference.items():
        assert metrics[key] == points, key  # every step once, the same values
    # the rollout table: each logged epoch's rows once (rows of a redone epoch are replaced)
    assert rollout_table(world, run_dir) == rollout_table(world, world / "reference")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is True
    assert (
        sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))[-1].name
        == f"epoch{EPOCHS - 1:04d}.ckpt"
    )
    assert not list((run_dir / "checkpoints").glob("*.partial")) or fault.startswith("checkpoint")
