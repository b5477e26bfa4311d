"""The sweep of zoo staging folders: only those of dead processes of this host (or very old)."""

import os
import socket
import subprocess
import sys
import time

from pad_lightning.zoo.staging import PREFIX, STALE_S, new_staging, owner, sweep_stale


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_staging_is_named_after_this_process(tmp_path):
    path = new_staging(tmp_path)
    assert path.is_dir() and path.name.startswith(PREFIX)
    assert owner(path) == (os.getpid(), socket.gethostname())


def test_sweep_removes_only_folders_of_dead_builders_of_this_host(tmp_path):
    host = socket.gethostname()
    mine = new_staging(tmp_path)
    dead = tmp_path / f"{PREFIX}{dead_pid()}@{host}@x1"
    other_host = tmp_path / f"{PREFIX}{dead_pid()}@not-{host}@x2"
    unnamed_new = tmp_path / f"{PREFIX}abc"
    unnamed_old = tmp_path / f"{PREFIX}def"
    entry = tmp_path / "reverse-123"  # a finished entry is never touched
    for path in (dead, other_host, unnamed_new, unnamed_old, entry):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * 10)
    old = time.time() - STALE_S - 10
    os.utime(unnamed_old, (old, old))
    assert set(sweep_stale(tmp_path)) == {dead, unnamed_old}
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {mine.name, other_host.name, unnamed_new.name, entry.name}
    # another host's folder is left to its host until it is as old as an abandoned one; this
    # process's own folder never goes
    later = time.time() + STALE_S + 10
    assert set(sweep_stale(tmp_path, now=later)) == {other_host, unnamed_new}
    assert {p.name for p in tmp_path.iterdir()} == {mine.name, entry.name}
