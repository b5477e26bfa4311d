"""Unit tests of a run's lifecycle pieces: run directories, tracking URI and status, held metrics,
checkpoint choice on resume, resume overrides, typed config checks, fault injection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from pad_lightning.app.main import hydra_message, unique_dir
from pad_lightning.app.resume import RunFinished, claim_run_folder, resumed_config
from pad_lightning.app.schema.values import number
from pad_lightning.runtime.errors import CheckpointError, ConfigError
from pad_lightning.tracking.mlflow_run import RunLogger, absolute_tracking_uri, tracking_problem
from pad_lightning.training.checkpoints import pick_resume_checkpoint


def test_unique_dir_never_reuses_a_directory(tmp_path, monkeypatch):
    from pad_lightning.app import main as entry

    monkeypatch.setattr(entry, "_unique", {})
    first = unique_dir(str(tmp_path / "out" / "11-42-19"))
    assert unique_dir(str(tmp_path / "out" / "11-42-19")) == first  # same process: same answer
    entry._unique.clear()  # another process, the same second
    second = unique_dir(str(tmp_path / "out" / "11-42-19"))
    assert Path(first).name == "11-42-19" and Path(second).name == "11-42-19-2"
    assert Path(first).is_dir() and Path(second).is_dir()


def test_tracking_uri_made_absolute(tmp_path):
    assert (
        absolute_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert absolute_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("runs", tmp_path) == str(tmp_path / "runs")
    assert absolute_tracking_uri("http://host:5000", tmp_path) == "http://host:5000"


def test_tracking_problem_names_the_file(tmp_path):
    assert tracking_problem(f"sqlite:///{tmp_path}/mlflow.db") is None
    assert "does not exist" in tracking_problem(f"sqlite:///{tmp_path}/no/mlflow.db")
    assert tracking_problem("http://host:5000") is None
    (tmp_path / "notes.txt").write_text("not a database")
    assert "is not an SQLite database" in tracking_problem(f"sqlite:///{tmp_path}/notes.txt")
    assert "is a folder" in tracking_problem(f"sqlite:///{tmp_path}")


def test_store_errors_become_one_line():
    from mlflow.exceptions import MlflowException

    from pad_lightning.tracking.mlflow_run import store_error

    full = MlflowException(
        "(raised as a result of Query-invoked autoflush)\n(sqlite3.OperationalError) database "
        "or disk is full\n[SQL: INSERT INTO runs (run_uuid) VALUES (?)]"
    )
    assert store_error(full) == "database or disk is full"
    assert store_error(ValueError("not the store")) is None


@pytest.mark.slow
def test_first_runs_on_a_new_database_create_it_once(tmp_path):
    """Processes that open one missing sqlite database at the same moment (a start barrier):
    one creates it under `<db>.lock`, the others wait and open it; MLflow alone migrates it in
    each of them and all but one crash (duplicate column), leaving it half-migrated."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "import mlflow.store.tracking.sqlalchemy_store\n"
        "from pad_lightning.tracking.mlflow_run import RunLogger\n"
        "open(sys.argv[1] + str(os.getpid()), 'w').close()\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        "print(RunLogger(experiment_name='race', tracking_uri=sys.argv[3]).run_id)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "ready-"), str(go), uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        deadline = time.time() + 300
        while len(list(tmp_path.glob("ready-*"))) < 3 and time.time() < deadline:
            assert all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in outs)


def test_run_folder_is_owned_by_one_live_process(tmp_path):
    """The lock on a run folder is held by one process; a SIGKILLed holder leaves it free."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pad_lightning.runtime.locks import try_lock\n"
            "lock = try_lock(sys.argv[1])\n"
            "lock.record_owner()\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(run_dir / "run.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as err:
            claim_run_folder(run_dir, resuming=True)
        assert str(err.value).startswith(
            f"resume={str(run_dir)!r}: the run is in use by process {holder.pid} "
        )
    finally:
        holder.kill()
        holder.wait()
    lock = claim_run_folder(run_dir, resuming=True)  # released by the kernel with the process
    assert (run_dir / "run.lock").read_text().strip() == str(os.getpid())
    lock.release()
    # a new run is refused a folder that holds a run, without a lock file being added to it
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run .summary.json.; continue it with"):
        claim_run_folder(finished, resuming=False)
    assert sorted(os.listdir(finished)) == ["summary.json"]
    # a new run's folder that does not exist yet (named by output_dir=) is created, then locked
    fresh = tmp_path / "not" / "yet"
    lock = claim_run_folder(fresh, resuming=False)
    assert (fresh / "run.lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_run_logger_holds_metrics_until_commit_and_sets_status(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = RunLogger(experiment_name="t", tracking_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    logger.set_status("RUNNING")
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.hold_metrics = True
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.log_metrics({"train/loss": 0.5}, step=1)
    assert client.get_metric_history(logger.run_id, "train/loss") == []
    logger.commit()
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss")] == [0, 1]
    logger.log_metrics({"train/loss": 0.25}, step=2)
    assert logger.discard() == 1
    logger.commit()
    assert len(client.get_metric_history(logger.run_id, "train/loss")) == 2
    logger.finalize("success")  # Lightning's call after every trainer.test/fit: no status change
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.set_status("KILLED")
    assert client.get_run(logger.run_id).info.status == "KILLED"


def _checkpoints(tmp_path: Path, *epochs: int) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for epoch in epochs:
        torch.save({"state_dict": {}, "epoch": epoch}, folder / f"epoch{epoch:04d}.ckpt")
    (folder / "last.ckpt").symlink_to(f"epoch{epochs[-1]:04d}.ckpt")
    return tmp_path / "run"


def test_resume_checkpoint_falls_back_to_the_previous_readable_one(tmp_path):
    run_dir = _checkpoints(tmp_path, 3, 4)
    assert pick_resume_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"
    newest = run_dir / "checkpoints" / "epoch0004.ckpt"
    newest.write_bytes(newest.read_bytes()[:50])
    notes = []
    assert pick_resume_checkpoint(run_dir, notes.append).name == "epoch0003.ckpt"
    assert "unreadable" in notes[0]
    (run_dir / "checkpoints" / "epoch0003.ckpt").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="last.ckpt: cannot be read"):
        pick_resume_checkpoint(run_dir)


def test_resume_without_any_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="stopped before its first one"):
        pick_resume_checkpoint(tmp_path / "run")


def _run_dir(tmp_path: Path, status: str = "KILLED") -> Path:
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    saved = OmegaConf.create(
        {
            "n": 4,
            "resume": None,
            "output_dir": str(run_dir),
            "loss": {"name": "ppd"},
            "trainer": {"max_epochs": 10, "num_threads": None},
            "logger": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "print_time_every": 10},
        }
    )
    OmegaConf.save(saved, run_dir / "config.yaml")
    state = {"overrides": ["n=4"], "mlflow_run_id": "abc", "status": status}
    (run_dir / "run_state.json").write_text(json.dumps(state))
    return run_dir


def test_resume_applies_safe_overrides_and_refuses_the_others(tmp_path):
    run_dir = _run_dir(tmp_path)
    composed = OmegaConf.load(run_dir / "config.yaml")
    composed.trainer.max_epochs = 20
    composed.loss.name = "vpd"
    cfg, state = resumed_config(run_dir, composed, [f"resume={run_dir}", "trainer.max_epochs=20"])
    assert cfg.trainer.max_epochs == 20 and cfg.loss.name == "ppd" and cfg.resume == str(run_dir)
    assert state["mlflow_run_id"] == "abc"
    # repeating the run's own override, or a value equal to the saved one, is not a change
    resumed_config(
        run_dir, composed, ["n=4", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    )
    with pytest.raises(ConfigError, match=r"cannot change loss=vpd, experiment=smoke"):
        resumed_config(run_dir, composed, ["loss=vpd", "experiment=smoke"])


def test_resume_of_a_finished_run_is_refused_without_change(tmp_path):
    run_dir = _run_dir(tmp_path, status="FINISHED")
    (run_dir / "summary.json").write_text("{}")
    before = sorted(os.listdir(run_dir))
    with pytest.raises(RunFinished, match="is finished"):
        resumed_config(run_dir, OmegaConf.load(run_dir / "config.yaml"), [])
    assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize(
    ("value", "kwargs", "ok"),
    [
        (0.5, {"low": 0, "high": 1}, True),
        ("abc", {"low": 0, "low_open": True}, False),
        (True, {"integer": True, "low": 2}, False),
        (1.5, {"integer": True, "low": 0}, False),
        (None, {"null": True, "low": 1}, True),
        (0, {"low": 0, "low_open": True}, False),
        (1.0, {"low": 0, "high": 1, "high_open": True}, False),
    ],
)
def test_number_checks_type_and_range(value, kwargs, ok):
    if ok:
        number(value, "k", **kwargs)
    else:
        with pytest.raises(ConfigError) as err:
            number(value, "k", **kwargs)
        assert str(err.value).startswith(f"k={value!r}: must be ") and "\n" not in str(err.value)


def test_hydra_messages_become_one_line():
    from hydra.errors import MissingConfigException

    err = MissingConfigException(
        "In 'config': Could not find 'loss/foo'\n\nAvailable options in 'loss':\n\tppd\n\tvpd\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf",
        missing_cfg_file="loss/foo",
    )
    assert hydra_message(err) == "In 'config': Could not find 'loss/foo'; valid: ppd, vpd"


def test_fault_point_kills_at_the_kth_hit(tmp_path):
    script = (
        "from pad_lightning.runtime.interrupts import fault\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    fault('step')\n"
    )
    env = dict(os.environ, PAD_LIGHTNING_FAULT="step:3")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9 and proc.stdout.split() == ["0", "1", "2"]
    env["PAD_LIGHTNING_FAULT"] = "rollout:1"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 5


def test_carried_metrics_are_written_once(tmp_path):
    """A kill between writing a checkpoint and committing its metrics: the checkpoint carries
    them, and the resumed run writes them unless the commit tag says they were written."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = RunLogger(experiment_name="t", tracking_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    logger.hold_metrics = True
    logger.log_metrics({"train/loss": 1.0, "val/loss": 2.0}, step=0)
    time.sleep(0.01)
    logger.log_metrics({"val/loss": 2.0}, step=0)  # a key logged twice at one step stays twice
    carried = logger.held()
    assert logger.commit_carried(carried, commit_id=2)  # the stopped process never committed
    assert not logger.commit_carried(carried, commit_id=2)  # already written: nothing again
    assert len(client.get_metric_history(logger.run_id, "val/loss")) == 2
    logger.log_metrics({"train/loss": 0.5}, step=2)
    logger.commit(commit_id=4)  # a normal commit also records its checkpoint
    assert not logger.commit_carried(logger.held(), commit_id=4)
    assert client.get_run(logger.run_id).data.tags["pad_lightning.committed_step"] == "4"
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss")] == [0, 2]
    logger.log_metrics({"epoch": 3}, step=6)  # Lightning's epoch counter: not logged
    assert "epoch" not in client.get_run(logger.run_id).data.metrics


def test_resume_prefers_a_newer_checkpoint_than_the_link(tmp_path):
    """A stop after a checkpoint was renamed into place but before last.ckpt was relinked."""
    run_dir = _checkpoints(tmp_path, 3, 4)
    link = run_dir / "checkpoints" / "last.ckpt"
    link.unlink()
    link.symlink_to("epoch0003.ckpt")
    assert pick_resume_checkpoint(run_dir, lambda _: None).name == "epoch0004.ckpt"
    link.unlink()  # stopped between removing the old link and making the new one
    assert pick_resume_checkpoint(run_dir, lambda _: None).name == "epoch0004.ckpt"


def test_auto_inference_dtype_uses_bf16_only_where_it_is_fast(monkeypatch):
    from pad_lightning.training import module

    assert module.resolve_inference_dtype("float32", "cpu") is None
    assert module.resolve_inference_dtype("bfloat16", "cpu") is torch.bfloat16
    monkeypatch.setattr(module, "fast_bf16", lambda device_type: False)
    assert module.resolve_inference_dtype("auto", "cpu") is None
    monkeypatch.setattr(module, "fast_bf16", lambda device_type: True)
    assert module.resolve_inference_dtype("auto", "cpu") is torch.bfloat16


def test_run_name_and_tags_say_what_the_run_is():
    from pad_lightning.tracking.mlflow_run import run_name, run_tags

    overrides = ["loss=vpd", "n=4", "seed=1", "logger.tracking_uri=sqlite:///x.db", "+extra=1"]
    assert run_name(overrides) == "loss=vpd,n=4,seed=1,+extra=1"
    assert run_name(["hydra.run.dir=/x"]) == "default"
    # a job of a sweep is named by its swept overrides (the shared ones name the sweep)
    assert run_name(overrides, swept=["n", "seed"]) == "n=4,seed=1"
    tags = run_tags(
        overrides, {"dir": "/sweeps/a", "job": 3, "parent_run_id": "p1", "swept": ["n"]}
    )
    assert tags["override.loss"] == "vpd" and tags["override.extra"] == "1"
    assert tags["sweep.dir"] == "/sweeps/a" and tags["sweep.job"] == "3"
    assert tags["mlflow.parentRunId"] == "p1" and tags["sweep.swept"] == "n"
    assert tags["mlflow.note.content"] == f"`python -m pad_lightning.run {' '.join(overrides)}`"


def test_swept_keys_are_the_keys_a_sweep_varies():
    from pad_lightning.app.sweep import swept_keys

    overrides = ["experiment=smoke", "n=2,4", "seed=range(3)", "loss=choice(ppd,vpd)", "+x=1"]
    assert swept_keys(overrides) == ["n", "seed", "loss"]


def test_resume_refuses_max_epochs_below_the_trained_epochs(tmp_path):
    """Lightning would raise a MisconfigurationException mid-start (a traceback, and the run
    marked FAILED); the check names the key and the smallest valid value first."""
    from pad_lightning.app.resume import check_epochs

    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 46, "state_dict": {"w": torch.zeros(3)}}, ckpt)  # 47 epochs trained
    with pytest.raises(ConfigError) as err:
        check_epochs(ckpt, 40)
    assert str(err.value) == (
        "trainer.max_epochs=40: the run has already trained 47 epochs (last.ckpt); "
        "resume with trainer.max_epochs >= 47, or without it"
    )
    check_epochs(ckpt, 47)  # finishing exactly there is allowed
