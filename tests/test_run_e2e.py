"""End-to-end runs of `python -m pad_lightning.run` with the micro zoo (experiment=smoke)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import subprocess_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _cmd(tmp: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "experiment=smoke",
        f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
        *overrides,
    ]


def run(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(tmp, *overrides),
        cwd=tmp,
        env=subprocess_env(tmp),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _client(tmp: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run(tmp, f"hydra.run.dir={tmp}/run")
    return tmp, proc


def test_default_run_writes_summary_and_prints_its_path_last(smoke_run):
    tmp, proc = smoke_run
    last_line = proc.stdout.strip().splitlines()[-1]
    assert Path(last_line) == tmp / "run" / "summary.json"
    summary = json.loads(Path(last_line).read_text())
    for side in ("before", "after"):
        for key in (
            "exact_match",
            "quality",
            "teacher_reward",
            "kendall_tau",
            "top1_agreement",
            "loss",
            "teacher_q_tau",
        ):
            assert key in summary[side]
        assert 0.0 <= summary[side]["exact_match"] <= 1.0
        assert 0.0 <= summary[side]["loss"] <= 0.7  # a JSD in nats is at most ln 2
    assert summary["delta"]["quality"] == pytest.approx(
        summary["after"]["quality"] - summary["before"]["quality"]
    )
    for part in ("generation", "teacher_scoring", "calibration", "training", "other"):
        assert summary["timings"][f"mean_{part}_s"] > 0
    assert summary["timings"]["epochs"] == 3


def test_mlflow_run_has_params_metrics_and_artifacts(smoke_run):
    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    run_ = client.get_run(summary["mlflow_run_id"])
    assert run_.data.params["n"] == "4"
    assert run_.data.params["loss.name"] == "ppd"
    assert "calibration.template" in run_.data.params
    history = client.get_metric_history(run_.info.run_id, "train/loss")
    assert len(history) == 3 * 2  # 3 epochs x 2 optimizer steps (8 prompts, batches of 4)
    for key in (
        "rollout/distinct_fraction",
        "time/generation_s",
        "time/training_s",
        "before/exact_match",
        "after/exact_match",
        "val/exact_match",
    ):
        assert key in run_.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"config.yaml", "overrides.yaml", "summary.json", "student", "rollouts"} <= artifacts
    tables = {a.path for a in client.list_artifacts(run_.info.run_id, "rollouts")}
    assert "rollouts/epoch_0000.json" in tables
    table = json.loads(
        Path(
            client.download_artifacts(run_.info.run_id, "rollouts/epoch_0000.json", str(tmp))
        ).read_text()
    )
    assert set(table["columns"]) >= {"prompt", "response", "teacher_score"}
    assert len(table["data"]) == 8 * 4  # sample_log_prompts x n


def test_checkpoint_has_student_only_and_student_folder_loads(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _ = smoke_run
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("student.") for k in keys)
    student = AutoModelForCausalLM.from_pretrained(tmp / "run" / "student")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "run" / "student")
    assert tokenizer.chat_template
    for name, value in student.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"student.{name}"])


def test_multirun_logs_one_mlflow_run_per_job(tmp_path):
    proc = subprocess.run(
        [
            *_cmd(tmp_path, "trainer.max_epochs=1", "n=2,4", f"hydra.sweep.dir={tmp_path}/sweep"),
            "--multirun",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    ids = {json.loads(s.read_text())["mlflow_run_id"] for s in summaries}
    assert len(ids) == 2
    client = _client(tmp_path)
    runs = [client.get_run(i) for i in ids]
    assert sorted(r.data.params["n"] for r in runs) == ["2", "4"]
    # names say what each run is (not one RNG-drawn name for all); tags group the sweep
    assert sorted(r.info.run_name for r in runs) == [
        "experiment=smoke,trainer.max_epochs=1,n=2",
        "experiment=smoke,trainer.max_epochs=1,n=4",
    ]
    for r in runs:
        tags = r.data.tags
        assert tags["override.n"] == r.data.params["n"]
        assert tags["sweep.dir"] == str((tmp_path / "sweep").resolve())
        assert tags["sweep.job"] in ("0", "1")
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in (
            "true",
            "false",
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_crashed_run_stays_running_and_resumes_into_the_same_mlflow_run(tmp_path):
    """SIGKILL (a crash): the MLflow run never looks finished; resume logs every step once.
    SIGTERM and Ctrl-C are in test_faults.py."""
    run_dir = tmp_path / "run"
    cmd = _cmd(tmp_path, "trainer.max_epochs=6", f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # a test run launched in the background (`cmd &` without job control) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler: restore the default
        preexec_fn=_default_sigint,
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch_at_kill < 5
    run_id = json.loads((run_dir / "run_state.json").read_text())["mlflow_run_id"]
    assert _client(tmp_path).get_run(run_id).info.status == "RUNNING"

    resumed = run(tmp_path, f"resume={run_dir}")
    summary = json.loads(Path(resumed.stdout.strip().splitlines()[-1]).read_text())
    assert summary["resumed"] is True
    assert summary["mlflow_run_id"] == run_id
    assert _client(tmp_path).get_run(run_id).info.status == "FINISHED"
    history = _client(tmp_path).get_metric_history(run_id, "train/loss")
    # every logged value, not distinct steps: each step once, before and after the kill
    assert sorted(m.step for m in history) == list(range(6 * 2))


def test_self_teacher_control_is_one_override(tmp_path):
    proc = run(
        tmp_path,
        "model.teacher.zoo=student",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}/run",
    )
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    params = _client(tmp_path).get_run(summary["mlflow_run_id"]).data.params
    assert params["model.teacher.zoo"] == "student"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("n=1", "n=1"),
        ("calibration.alpha=1.5", "calibration.alpha"),
        ("rollout.temperature=-1", "rollout.temperature"),
        ("loss.name=nope", "loss.name"),
        ("n=16", "n=16"),
        ("loss.divergence=tv", "loss.divergence"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("calibration.mode=setwise", "calibration.mode"),
        ("decomposition=iterative decomposition.group_size=3", "decomposition.group_size"),
        ("model.zoo.cache_dir=/proc/forbidden", "model.zoo.cache_dir"),
    ],
)
def test_bad_config_stops_at_start_with_one_line(tmp_path, override, key):
    proc = run(tmp_path, *override.split(), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: ") and key in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing was built before the check


def test_n16_jsd_message_names_the_options_that_work(tmp_path):
    proc = run(tmp_path, "n=16", check=False)
    message = proc.stderr.strip()
    assert message.startswith("config error: n=16: loss=ppd loss.divergence=jsd enumerates")
    for option in (
        "loss.divergence=kl",
        "decomposition=split decomposition.group_size=8",
        "decomposition=iterative decomposition.group_size=8",
        "loss=vpd",
    ):
        assert option in message


def _summary_and_run(tmp: Path, proc: subprocess.CompletedProcess):
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    return summary, _client(tmp).get_run(summary["mlflow_run_id"])


def test_n16_with_exact_kl_runs(tmp_path):
    proc = run(tmp_path, "n=16", "loss.divergence=kl", "trainer.max_epochs=2")
    summary, run_ = _summary_and_run(tmp_path, proc)
    assert run_.data.params["loss.divergence"] == "kl"
    assert summary["after"]["loss"] > 0  # KL(P_T || P_S) over 16! rankings, by the subset DP
    assert "rollout/teacher_ranking_entropy" in run_.data.metrics
    history = _client(tmp_path).get_metric_history(run_.info.run_id, "rollout/response_length")
    assert len(history) == 2


def test_iterative_decomposition_makes_n_over_k_rollouts_per_epoch(tmp_path):
    proc = run(
        tmp_path,
        "decomposition=iterative",
        "decomposition.group_size=2",
        "calibration.mode=pairwise",
        "trainer.max_epochs=2",
    )
    _, run_ = _summary_and_run(tmp_path, proc)
    client = _client(tmp_path)
    # n = 4 as 2 rounds of 2 samples: 2 x 2 optimizer steps per epoch (8 prompts, batches of 4)
    assert len(client.get_metric_history(run_.info.run_id, "train/loss")) == 2 * 2 * 2
    assert run_.data.params["decomposition.name"] == "iterative"
    assert run_.data.metrics["tokens/calibration"] > 0  # pairwise MCQs over each round's 2


def test_ddp_on_two_cpu_processes_writes_one_summary_into_one_mlflow_run(tmp_path):
    proc = run(
        tmp_path,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path}/run",
    )
    printed = [line for line in proc.stdout.splitlines() if line.endswith("summary.json")]
    assert printed == [str(tmp_path / "run" / "summary.json")]  # rank 0 only
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())
    assert state["mlflow_run_id"] == summary["mlflow_run_id"]
    assert (
        len(
            _client(tmp_path).search_runs(
                [_client(tmp_path).get_experiment_by_name("pad-lightning").experiment_id]
            )
        )
        == 1
    )
