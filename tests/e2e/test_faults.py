"""Bad input and faults: every case stops with one line naming the problem, and loses nothing.

Families (README "Reliability" lists them with their counts): config values and overrides,
resume misuse, data files, model folders, checkpoints, signals, concurrent runs, disk and
permissions, numerics. A finished smoke run in the same `mlflow.db` (`baseline`) is checked
after every case: its MLflow run and its files must be unchanged.

Cases that fail before training are run in-process through the real entry point
(`pad_lightning.run.main` with a patched argv: ~1 s each instead of ~5 s for a new interpreter);
`test_one_line_on_real_stderr` runs a sample of them as subprocesses to check what a user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import subprocess_env
from safetensors.torch import load_file, save_file
from tiny_models import make_tiny_lm

pytestmark = pytest.mark.slow


# -- the shared world: zoo cache, mlflow.db and a finished baseline run -------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


def cmd(world: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "experiment=smoke",
        f"logger.tracking_uri=sqlite:///{world}/mlflow.db",
        *overrides,
    ]


def launch(world: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd(world, *overrides),
        cwd=world,
        env=subprocess_env(world),
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def client(world: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{world}/mlflow.db")


def run_id_of(run_dir: Path) -> str:
    return json.loads((run_dir / "run_state.json").read_text())["mlflow_run_id"]


def logged_twice(world: Path, run_id: str) -> dict[str, list[int]]:
    """Every (metric, step) of which MLflow holds more than one value: a run logs each once,
    also across stops and resumes (an uninterrupted smoke run has none)."""
    tracking = client(world)
    twice = {}
    for key in tracking.get_run(run_id).data.metrics:
        counts = Counter(m.step for m in tracking.get_metric_history(run_id, key))
        if steps := sorted(step for step, n in counts.items() if n > 1):
            twice[key] = steps
    return twice


def fingerprint(world: Path, run_dir: Path) -> dict:
    """Everything a user would look at afterwards: files (hashes) and the MLflow run."""
    files = {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
    run = client(world).get_run(run_id_of(run_dir))
    return {
        "files": files,
        "status": run.info.status,
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
    }


@pytest.fixture(scope="module")
def baseline(world):
    proc = launch(world, f"hydra.run.dir={world}/baseline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return world / "baseline", fingerprint(world, world / "baseline")


@pytest.fixture(autouse=True)
def nothing_earlier_lost(world, baseline):
    yield
    run_dir, before = baseline
    assert fingerprint(world, run_dir) == before


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text
    return lines[0]


def last_line(stderr: str) -> str:
    """The error line of a run that failed after it started (progress bars precede it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.strip().splitlines() if line.strip()][-1]


# -- in-process runs of the entry point ------------------------------------------------------


@pytest.fixture
def main_in_process(world, monkeypatch, capsys):
    """Call `pad_lightning.run.main` as `python -m pad_lightning.run ...` would; returns
    (exit message or None, captured stdout, stderr)."""
    from pad_lightning import run as entry

    monkeypatch.chdir(world)
    monkeypatch.setenv("PAD_LIGHTNING_CACHE", str(world / "cache"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    entry.one_line_config_errors()

    def call(*overrides: str, smoke: bool = True):
        argv = cmd(world, *overrides)[3:] if smoke else list(overrides)
        monkeypatch.setattr(sys, "argv", ["pad_lightning.run", *argv])
        capsys.readouterr()
        code = None
        try:
            entry.main()
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    yield call
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def assert_refused(result, prefix: str, *names: str) -> str:
    code, _, err = result
    assert isinstance(code, str), f"expected a one-line exit, got {code!r}; stderr: {err[-2000:]}"
    line = one_line(code)
    assert "Traceback" not in err
    assert line.startswith(prefix), line
    for name in names:
        assert name in line, line
    return line


# -- config values and overrides -----------------------------------------------------------

CONFIG_CASES = [
    ("rollout.temperature=abc", "rollout.temperature"),
    ("trainer.optim.lr=abc", "trainer.optim.lr"),
    ("trainer.val_every_n_epochs=0", "trainer.val_every_n_epochs"),
    ("model=hf", "model.zoo"),  # with experiment=smoke, which shrinks the toy zoo
    ("trainer.optim.warmup_steps=-5", "trainer.optim.warmup_steps"),
    ("trainer.optim.min_lr_ratio=1.5", "trainer.optim.min_lr_ratio"),
    ("loss=foo", "loss/foo"),
    ("foo=1", "foo"),
    ("n=[1,", "[1,"),
    ("n=abc", "n="),
    ("n=true", "n="),
    ("rollout.top_k=1.5", "rollout.top_k"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("calibration.alpha=x", "calibration.alpha"),
    ("trainer.optim.betas=[0.9]", "trainer.optim.betas"),
    ("trainer.checkpoint_every_n_epochs=0", "trainer.checkpoint_every_n_epochs"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens"),
    ("trainer.num_threads=0", "trainer.num_threads"),
    ("logger.print_time_every=-1", "logger.print_time_every"),
    ("trainer.optim.weight_decay=-0.1", "trainer.optim.weight_decay"),
    ("calibration.debias=maybe", "calibration.debias"),
    ("+trainer.optim.lrr=1", "trainer.optim.lrr: unknown key; valid: lr, "),
    ("+foo=1", "foo: unknown key; valid: n, seed, "),
    ("resume=", "resume='': empty"),
    ("objective=val/loss", "objective: moved; use optimized_metric="),
]


@pytest.mark.parametrize(("override", "key"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value(main_in_process, world, override, key):
    cache = world / "cache"
    had_cache = cache.exists()
    assert_refused(main_in_process(override), "config error: ", key)
    assert cache.exists() == had_cache  # stopped before any model was built


def test_one_line_on_real_stderr(world, baseline):
    """What a user sees: exactly one line on stderr, exit status 1, for a sample of cases."""
    for override in ("rollout.temperature=abc", "loss=foo"):
        proc = launch(world, override)
        assert proc.returncode == 1
        assert one_line(proc.stderr).startswith("config error: ")


# -- resume misuse ------------------------------------------------------------------------------


def test_resume_missing_directory(main_in_process, world):
    assert_refused(main_in_process(f"resume={world}/nope"), "config error: ", "no such directory")


def test_resume_of_a_file(main_in_process, baseline):
    summary = baseline[0] / "summary.json"
    assert_refused(
        main_in_process(f"resume={summary}"), "config error: ", "a file, not a directory"
    )


def test_resume_directory_without_run_state(main_in_process, world, baseline):
    stray = world / "stray"
    stray.mkdir(exist_ok=True)
    shutil.copy(baseline[0] / "config.yaml", stray / "config.yaml")
    assert_refused(main_in_process(f"resume={stray}"), "config error: ", "run_state.json")


def test_resume_corrupt_run_state(main_in_process, world, baseline):
    bad = world / "bad-state"
    shutil.copytree(baseline[0], bad, symlinks=True, dirs_exist_ok=True)
    (bad / "run_state.json").write_text('{"mlflow_run_id": ')
    assert_refused(main_in_process(f"resume={bad}"), "config error: ", "run_state.json", "JSON")


def test_resume_refuses_overrides_that_change_the_run(main_in_process, world, stopped_run):
    line = assert_refused(
        main_in_process(f"resume={stopped_run}", "loss=vpd", "rollout.temperature=0.5"),
        "config error: ",
        "loss=vpd",
        "rollout.temperature=0.5",
    )
    assert "trainer.max_epochs" in line  # says what can change


def test_resume_of_a_finished_run_changes_nothing(main_in_process, baseline):
    code, out, _ = main_in_process(f"resume={baseline[0]}")
    assert code is None
    assert "is finished" in out and "nothing changed" in out


# -- data files: checked before any model loads -----------------------------------------------


def _data(world: Path, name: str, text: str | bytes) -> Path:
    path = world / "data" / name
    path.parent.mkdir(exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


DATA_CASES = [
    ("missing", None, "no such file"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "malformed JSON"),
    ("notutf8.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n', "not UTF-8"),
    ("empty.jsonl", "", "no prompts"),
    ("list.jsonl", "[1, 2]\n", "not an object"),
]


@pytest.mark.parametrize(("name", "text", "message"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_file(main_in_process, world, tmp_path, name, text, message):
    path = world / "data" / "does-not-exist.jsonl" if text is None else _data(world, name, text)
    cache = tmp_path / "fresh-cache"
    result = main_in_process(
        "data=jsonl",
        f"data.path={path}",
        "data.val_size=1",
        "data.test_size=1",
        f"model.zoo.cache_dir={cache}",
    )
    assert_refused(result, "", str(path.name), message)
    assert not any(cache.rglob("*.safetensors"))  # no model was built or loaded


def test_data_path_that_is_a_folder(main_in_process, world):
    folder = world / "data-folder"
    folder.mkdir(exist_ok=True)
    result = main_in_process(
        "data=jsonl", f"data.path={folder}", "data.val_size=1", "data.test_size=1"
    )
    assert_refused(result, "", f"data.path={str(folder)!r}: is a folder; data=jsonl reads one")


def test_prompt_longer_than_the_model_positions_is_refused_by_line(main_in_process, world):
    """One prompt of 3000 characters (tokens, for the toy zoo's character tokenizer) in a file
    of short ones; the smoke models have 512 positions (max_position_embeddings)."""
    short = "".join(json.dumps({"prompt": f"what is {i} + {i}?"}) + "\n" for i in range(12))
    path = _data(world, "huge.jsonl", short + json.dumps({"prompt": "x" * 3000}) + "\n")
    result = main_in_process(
        "data=jsonl", f"data.path={path}", "data.val_size=2", "data.test_size=2"
    )
    line = assert_refused(
        result, "data error: ", f"{path} line 13: ", "512 positions", "max_position_embeddings"
    )
    assert "rollout.max_new_tokens=8" in line and "data.max_prompt_tokens=504" in line


def test_judge_question_longer_than_the_teacher_positions_is_refused(main_in_process, world):
    """A 480-character prompt fits the 512 positions with a response of 8 tokens, but the
    teacher's listwise MCQ restates it with n = 4 responses of up to 8 tokens: over 512."""
    short = "".join(json.dumps({"prompt": f"what is {i} + {i}?"}) + "\n" for i in range(12))
    path = _data(world, "long-question.jsonl", short + json.dumps({"prompt": "y" * 480}) + "\n")
    base = ("data=jsonl", f"data.path={path}", "data.val_size=2", "data.test_size=2")
    line = assert_refused(
        main_in_process(*base, "calibration.alpha=0.5", "calibration.mode=listwise", "n=4"),
        "config error: ",
        "calibration.mode=listwise",
        f"{path} line 13",
        "rollout.max_new_tokens=8",
        "512 positions",
        "calibration.mode=pairwise",
    )
    assert "4 responses" in line


# -- model folders --------------------------------------------------------------------------------


def _hf_pair(world: Path, damage: str) -> tuple[Path, Path]:
    root = world / "models" / damage
    if not root.exists():
        for role in ("student", "teacher"):
            make_tiny_lm(root / role, "bytelevel", seed=0)
        target = root / "student" / ("config.json" if damage == "config" else "model.safetensors")
        data = target.read_bytes()
        if damage == "truncated":
            target.write_bytes(data[: len(data) // 2])
        elif damage == "random":
            target.write_bytes(os.urandom(len(data)))
        else:
            target.write_text(data.decode()[:40])
    return root / "student", root / "teacher"


@pytest.mark.parametrize("damage", ["truncated", "random", "config"])
def test_damaged_model_folder(main_in_process, world, damage):
    student, teacher = _hf_pair(world, damage)
    result = main_in_process(
        "model=hf",
        f"model.student.path={student}",
        f"model.teacher.path={teacher}",
        f"logger.tracking_uri=sqlite:///{world}/mlflow.db",
        smoke=False,
    )
    name = "config.json" if damage == "config" else "model.safetensors"
    assert_refused(result, "config error: ", "model.student.path", str(student / name))


def test_model_folder_without_tokenizer_files(main_in_process, world):
    root = world / "models" / "no-tokenizer"
    if not root.exists():
        for role in ("student", "teacher"):
            make_tiny_lm(root / role, "bytelevel", seed=0)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            (root / "student" / name).unlink(missing_ok=True)
    result = main_in_process(
        "model=hf",
        f"model.student.path={root / 'student'}",
        f"model.teacher.path={root / 'teacher'}",
        f"logger.tracking_uri=sqlite:///{world}/mlflow.db",
        smoke=False,
    )
    line = assert_refused(result, "config error: ", "model.student.path", "no tokenizer files")
    assert line.endswith("or save the tokenizer with the model"), line  # not cut mid-sentence


def _generate(*args: str) -> str:
    """`python -m pad_lightning.generate <args>` in this process: its one-line exit message."""
    from pad_lightning import generate

    with pytest.raises(SystemExit) as stop:
        generate.main(list(args))
    return str(stop.value.code)


def test_generate_questions_that_is_a_folder(world, tmp_path):
    folder = tmp_path / "questions"
    folder.mkdir()
    line = one_line(
        _generate(
            "--model", str(world / "baseline" / "student"), "--format", "alpaca_eval",
            "--questions", str(folder), "--out", str(tmp_path / "answers.json"),
        )
    )  # fmt: skip
    assert line == f"generate error: --questions {folder}: is a folder; give a JSON or JSONL file"


def test_generate_refusal_of_remote_code_names_its_own_flag(world, tmp_path):
    model = make_tiny_lm(tmp_path / "custom", "bytelevel", seed=0)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "tinycustom"
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM",
    }
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_tiny.py").write_text(
        "from transformers import Qwen2Config\n\n\nclass TinyConfig(Qwen2Config):\n"
        "    model_type = 'tinycustom'\n"
    )
    (model / "modeling_tiny.py").write_text(
        "from transformers import Qwen2ForCausalLM\n\nfrom .configuration_tiny import TinyConfig"
        "\n\n\nclass TinyForCausalLM(Qwen2ForCausalLM):\n    config_class = TinyConfig\n"
    )
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"instruction": "Say hi."}]))
    line = one_line(
        _generate(
            "--model", str(model), "--format", "alpaca_eval", "--questions", str(questions),
            "--out", str(tmp_path / "answers.json"),
        )
    )  # fmt: skip
    assert line.startswith(f"generate error: --model {model}: ships custom model code"), line
    assert "--trust-remote-code" in line and "model.student" not in line
    assert not (tmp_path / "answers.json").exists()


# -- disk and permissions -------------------------------------------------------------------------


def _immutable(path: Path, on: bool) -> bool:
    """chattr +i / -i: read-only even for root (tests run as root, where chmod does nothing)."""
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_read_only_mlflow_db_fails_at_once(main_in_process, world, baseline):
    db = world / "mlflow.db"
    if not _immutable(db, True):
        pytest.skip("chattr +i is not permitted here")
    try:
        started = time.perf_counter()
        assert_refused(main_in_process(), "config error: ", "logger.tracking_uri", str(db))
        assert time.perf_counter() - started < 30  # MLflow alone retries for about two minutes
    finally:
        _immutable(db, False)


def test_tracking_folder_missing(main_in_process, world):
    result = main_in_process(f"logger.tracking_uri=sqlite:///{world}/no/such/mlflow.db")
    assert_refused(result, "config error: ", "logger.tracking_uri", "does not exist")


def test_read_only_output_directory(main_in_process, world):
    parent = world / "locked"
    parent.mkdir(exist_ok=True)
    if not _immutable(parent, True):
        pytest.skip("chattr +i is not permitted here")
    try:
        result = main_in_process(f"hydra.run.dir={parent}/run")
    finally:
        _immutable(parent, False)
    code, _, err = result
    line = one_line(code if isinstance(code, str) else err)
    assert str(parent) in line and "config error: " in line


def test_read_only_zoo_cache(main_in_process, world):
    result = main_in_process("model.zoo.cache_dir=/proc/forbidden")
    assert_refused(result, "config error: ", "model.zoo.cache_dir")


@pytest.mark.parametrize("kind", ["text", "folder"])
def test_tracking_store_that_is_not_a_database(main_in_process, world, kind):
    store = world / f"store-{kind}.db"
    if kind == "text":
        store.write_text("notes, not a database\n")
    else:
        store.mkdir(exist_ok=True)
    line = assert_refused(
        main_in_process(f"logger.tracking_uri=sqlite:///{store}"),
        "config error: ",
        "logger.tracking_uri",
        str(store),
    )
    assert ("is not an SQLite database" if kind == "text" else "is a folder") in line
    if kind == "text":
        assert store.read_text() == "notes, not a database\n"  # left as it was


def test_tracking_store_on_a_full_disk(main_in_process, world):
    disk = world / "full-disk"
    disk.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k"], capture_output=True)
        result = main_in_process(f"logger.tracking_uri=sqlite:///{disk}/mlflow.db")
        assert_refused(result, "config error: ", "logger.tracking_uri", f"{disk} is full")
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)  # even if busy


def test_resume_after_a_full_disk_logs_every_value_once(world):
    """The report cannot be written (its file is on a full disk: /dev/full) after the final
    test values were logged: one line naming the file, FAILED; resumed once space is free, the
    run logs those values (and every other) once."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    run_dir = world / "disk-full-run"
    run_dir.mkdir()
    (run_dir / "summary.json.partial").symlink_to("/dev/full")
    proc = launch(world, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last_line(proc.stderr) == f"error: {run_dir / 'summary.json'}: No space left on device"
    run_id = run_id_of(run_dir)
    assert client(world).get_run(run_id).info.status == "FAILED"
    (run_dir / "summary.json.partial").unlink()  # space freed
    resumed = launch(world, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client(world).get_run(run_id).info.status == "FINISHED"
    assert logged_twice(world, run_id) == {}
    assert _all_values(world, run_id, "test/exact_match") == [0, 6]  # before and after, once


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(world, baseline):
    """A run stopped (SIGKILL) after 3 of 6 epochs: checkpoints epoch0001, epoch0002. It uses
    the relative tracking URI sqlite:///mlflow.db (the default), from the folder `world`."""
    run_dir = world / "stopped"
    env = dict(subprocess_env(world), PAD_LIGHTNING_FAULT="rollout:4")
    proc = subprocess.run(
        [
            *cmd(world, "trainer.max_epochs=6", f"hydra.run.dir={run_dir}"),
            "logger.tracking_uri=sqlite:///mlflow.db",
        ],
        cwd=world,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert client(world).get_run(run_id_of(run_dir)).info.status == "RUNNING"
    return run_dir


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_truncated_only_checkpoint_is_one_line(main_in_process, world, stopped_run):
    run_dir = _copy_run(stopped_run, world / "ckpt-truncated")
    folder = run_dir / "checkpoints"
    for old in sorted(folder.glob("epoch*.ckpt"))[:-1]:
        old.unlink()
    newest = sorted(folder.glob("epoch*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    result = main_in_process(f"resume={run_dir}")
    assert_refused(result, "checkpoint error: ", "last.ckpt", "cannot be read")


def test_random_bytes_newest_checkpoint_falls_back_to_the_previous(world, stopped_run):
    run_dir = _copy_run(stopped_run, world / "ckpt-random")
    newest = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))[-1]
    newest.write_bytes(os.urandom(newest.stat().st_size))
    # The copy continues the MLflow run of `stopped_run` (no other test resumes that one), from
    # another directory: the relative tracking URI it started with was stored absolute.
    elsewhere = world / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pad_lightning.run", f"resume={run_dir}"],
        cwd=elsewhere,
        env=subprocess_env(world),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume: {run_dir}/checkpoints/last.ckpt is unreadable" in proc.stdout
    assert "resuming from epoch0001.ckpt" in proc.stdout
    assert client(world).get_run(run_id_of(run_dir)).info.status == "FINISHED"
    assert not (elsewhere / "mlflow.db").exists()
    # epoch 2 was committed by the killed process and is trained again from epoch0001: every
    # value is in MLflow once (counted per metric and step, not distinct steps)
    run_id = run_id_of(run_dir)
    assert sorted(_all_values(world, run_id, "train/loss")) == list(range(6 * 2))
    assert logged_twice(world, run_id) == {}


# -- signals ------------------------------------------------------------------------------------


def _all_values(world: Path, run_id: str, key: str) -> list[int]:
    return [m.step for m in client(world).get_metric_history(run_id, key)]


def _start(world: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd(world, f"hydra.run.dir={run_dir}", *overrides),
        cwd=world,
        env=subprocess_env(world),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_by_signal_is_killed_exits_nonzero_and_resumes_every_step_once(world, sig, code):
    run_dir = world / f"signal-{sig.name}"
    proc = _start(world, run_dir, "trainer.max_epochs=6")
    _wait_for_checkpoint(proc, run_dir)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"resume={run_dir}" in err.strip().splitlines()[-1]
    run_id = run_id_of(run_dir)
    assert client(world).get_run(run_id).info.status == "KILLED"
    # resume, and train one epoch more than planned (a safe override)
    resumed = launch(world, f"resume={run_dir}", "trainer.max_epochs=7")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client(world).get_run(run_id).info.status == "FINISHED"
    steps = _all_values(world, run_id, "train/loss")  # every logged value, not distinct steps
    assert sorted(steps) == list(range(7 * 2))
    assert len(_all_values(world, run_id, "rollout/response_length")) == 7


def _start_zoo_build(world: Path, tmp_path: Path, **popen) -> tuple[Path, subprocess.Popen]:
    """A smoke run building the toy zoo in a fresh cache, returned once its staging folder
    exists (the zoo folder and the process, in its own session)."""
    zoo = tmp_path / "cache" / "zoo"
    proc = subprocess.Popen(
        cmd(world, f"hydra.run.dir={tmp_path / 'run'}"),
        cwd=world,
        env=dict(subprocess_env(world), PAD_LIGHTNING_CACHE=str(tmp_path / "cache")),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        **popen,
    )
    deadline = time.time() + 300
    while not list(zoo.glob(".building-*")) and time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the build ended first: {err[-2000:]}")
        time.sleep(0.05)
    if not list(zoo.glob(".building-*")):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("no zoo staging folder within 300 s")
    return zoo, proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_zoo_build_caches_nothing_and_says_so(world, tmp_path, sig, code):
    """Ctrl-C or SIGTERM while the toy zoo is being built (a fresh cache): one line, 128 + the
    signal, and no half-built entry or staging folder left in the cache."""
    zoo, proc = _start_zoo_build(
        world,
        tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(0.5)  # training the first zoo model
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err[-2000:]
    assert last_line(err).startswith(f"stopped by {sig.name} before the first checkpoint"), err
    assert "Detected KeyboardInterrupt" not in err
    assert list(zoo.iterdir()) == []  # no entry, no staging folder


def test_zoo_build_killed_outright_leaves_a_folder_the_next_build_removes(world, tmp_path):
    """SIGKILL cannot be caught: the staging folder stays, named after the dead process, and the
    next build's sweep (run first by every build) removes it."""
    from pad_lightning.zoo.staging import owner, sweep_stale

    zoo, proc = _start_zoo_build(world, tmp_path, stderr=subprocess.DEVNULL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list(zoo.glob(".building-*"))
    assert len(left) == 1 and owner(left[0])[0] == proc.pid
    assert sweep_stale(zoo) == left
    assert list(zoo.iterdir()) == []


# -- concurrent runs --------------------------------------------------------------------------------


def test_new_run_is_refused_a_folder_that_holds_a_run(main_in_process, baseline):
    """`hydra.run.dir` of a finished run: refused, and nothing in it changes (Hydra's own record
    in .hydra/ included; the autouse check compares every file)."""
    line = assert_refused(
        main_in_process(f"hydra.run.dir={baseline[0]}"),
        "config error: ",
        f"hydra.run.dir={str(baseline[0])!r}",
        "already holds a run",
        f"resume={baseline[0]}",
    )
    assert "run_state.json" in line


def _refused_while_running(world: Path, *overrides: str) -> str:
    proc = subprocess.run(
        cmd(world, *overrides),
        cwd=world,
        env=subprocess_env(world),
        capture_output=True,
        text=True,
        timeout=180,  # refused at start-up (a run that is not refused would take far longer)
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    return one_line(proc.stderr)


def test_one_process_per_run_folder(world):
    """While a run works, a resume of it and a new run given its folder are refused with one line
    naming its process; after it stops, two resumes started together: one trains, the other
    is refused naming the first, and every value is logged once."""
    run_dir = world / "owned"
    live = subprocess.Popen(
        cmd(world, f"hydra.run.dir={run_dir}", "trainer.max_epochs=200"),
        cwd=world,
        env=subprocess_env(world),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            assert live.poll() is None
            time.sleep(0.2)
        line = _refused_while_running(world, f"resume={run_dir}")
        assert line.startswith(f"config error: resume={str(run_dir)!r}: the run is in use by "), (
            line
        )
        assert f"process {live.pid} " in line
        line = _refused_while_running(world, f"hydra.run.dir={run_dir}")
        assert line.startswith(f"config error: hydra.run.dir={str(run_dir)!r}: "), line
        assert f"in use by process {live.pid} " in line
        assert live.poll() is None  # neither disturbed it
        os.killpg(live.pid, signal.SIGTERM)
        live.wait(timeout=120)
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)
            live.wait()
    assert live.returncode == 143
    done = int((run_dir / "checkpoints" / "last.ckpt").resolve().stem[len("epoch") :]) + 1
    resumes = [
        subprocess.Popen(
            cmd(world, f"resume={run_dir}", f"trainer.max_epochs={done + 1}"),
            cwd=world,
            env=subprocess_env(world),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in resumes]
    codes = [p.returncode for p in resumes]
    assert sorted(codes) == [0, 1], [err[-2000:] for _, err in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    line = one_line(outs[loser][1])
    assert f"the run is in use by process {resumes[winner].pid} " in line, line
    run_id = run_id_of(run_dir)
    assert client(world).get_run(run_id).info.status == "FINISHED"
    assert sorted(_all_values(world, run_id, "train/loss")) == list(range((done + 1) * 2))
    assert logged_twice(world, run_id) == {}


def test_two_runs_started_in_the_same_second_get_their_own_directories(world):
    cwd = world / "concurrent"
    cwd.mkdir()
    procs = [
        subprocess.Popen(
            cmd(world, "trainer.max_epochs=1", "logger.print_time_every=0"),
            cwd=cwd,
            env=subprocess_env(world),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    summaries = [Path(out.strip().splitlines()[-1]) for out, _ in outs]
    assert summaries[0].parent != summaries[1].parent
    assert summaries[0].parent.parent == summaries[1].parent.parent  # the same date folder
    ids = {json.loads(s.read_text())["mlflow_run_id"] for s in summaries}
    assert len(ids) == 2
    assert {client(world).get_run(i).info.status for i in ids} == {"FINISHED"}


# -- numerics -------------------------------------------------------------------------------------


def test_huge_learning_rate_stops_with_one_line_and_keeps_finite_checkpoints(world):
    run_dir = world / "diverged"
    proc = launch(
        world, "trainer.optim.lr=1e12", "trainer.max_epochs=6", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 1
    line = last_line(proc.stderr)
    assert line.startswith("training error: step "), line
    assert "trainer.optim.lr=1e+12" in line
    assert client(world).get_run(run_id_of(run_dir)).info.status == "FAILED"
    for ckpt in (run_dir / "checkpoints").glob("epoch*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values())


def test_nan_teacher_is_an_error_not_a_nan_loss(world):
    root = world / "models" / "nan-teacher"
    make_tiny_lm(root / "student", "bytelevel", seed=0)
    make_tiny_lm(root / "teacher", "bytelevel", seed=1)
    weights = root / "teacher" / "model.safetensors"
    tensors = load_file(weights)
    for name in tensors:
        if "embed" in name:
            tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    data = _data(world, "prompts.jsonl", "".join(f'{{"prompt": "q{i}"}}\n' for i in range(20)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            "model=hf",
            f"model.student.path={root / 'student'}",
            f"model.teacher.path={root / 'teacher'}",
            "data=jsonl",
            f"data.path={data}",
            "data.val_size=2",
            "data.test_size=2",
            "rollout.prompts_per_epoch=4",
            "rollout.batch_size=4",
            "rollout.max_new_tokens=4",
            "trainer.max_epochs=1",
            f"logger.tracking_uri=sqlite:///{world}/mlflow.db",
            f"hydra.run.dir={world}/nan-teacher-run",
        ],
        cwd=world,
        env=subprocess_env(world),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    line = last_line(proc.stderr)
    assert line.startswith("training error: ") and "teacher" in line, proc.stderr[-2000:]
