"""Memory does not grow with the epoch count of a calibrated run.

Each epoch logs the resident memory after it (`system/memory/rss_after_epoch_mb`, after the
heap's free pages are released) and its own peak (`system/memory/epoch_peak_rss_mb`). With MCQ
calibration every epoch brings new shapes (sequence, MCQ and batch lengths), and PyTorch's two
oneDNN kernel caches (ideep's computations, oneDNN's primitives), keyed by shape, grew with them
for hundreds of epochs at their default capacity; the run bounds them
(runtime.memory.bound_compute_cache). The student is held fixed (a learning rate
of 1e-12) so that every epoch does the same work on fresh samples.
"""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import subprocess_env

from pad_lightning.runtime.memory import CACHES

EPOCHS = 60


def _slope(values: list[float]) -> float:
    n = len(values)
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum(
        (i - mx) ** 2 for i in range(n)
    )


def _history(uri: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(uri)
    run = client.search_runs(client.get_experiment_by_name("pad-lightning").experiment_id)[0]
    assert run.info.status == "FINISHED"
    return [
        m.value
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_resident_memory_stays_level_over_many_calibrated_epochs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = subprocess_env(tmp_path)
    for name in CACHES:  # the run's own bound
        env.pop(name, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            "experiment=smoke",
            "n=8",
            "calibration.mode=pairwise",
            "rollout.prompts_per_epoch=32",
            "rollout.batch_size=32",
            "rollout.max_new_tokens=16",
            "trainer.optim.lr=1e-12",
            f"trainer.max_epochs={EPOCHS}",
            "trainer.val_every_n_epochs=1000",
            "logger.log_rollouts_every=0",
            "logger.log_student=false",
            f"logger.tracking_uri={uri}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = _history(uri, "system/memory/rss_after_epoch_mb")
    peaks = _history(uri, "system/memory/epoch_peak_rss_mb")
    assert len(rss) == len(peaks) == EPOCHS
    # Measured here with PyTorch's default caches (1024 entries each): both series rise about
    # 2 MB an epoch all along. With the run's bound, resident memory after an epoch is level
    # once the first epochs have warmed the caches, and the epoch peaks settle by epoch 30
    # (flat from 30 to 150 in a longer run).
    assert abs(_slope(rss[EPOCHS // 10 :])) < 0.2, rss
    assert _slope(peaks[EPOCHS // 2 :]) < 0.5, peaks
    assert os.path.exists(tmp_path / "run" / "summary.json")
