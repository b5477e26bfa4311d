"""Staging folders of zoo builds, and the sweep of those whose builder died.

A build writes into `<cache>/.building-<pid>@<host>@<random>` and renames it into place when done;
Ctrl-C or SIGTERM remove it (builder). A process killed outright (SIGKILL, out of memory, power)
cannot: its folder stays, holding up to the size of two models. Every later build first removes
the staging folders of this host whose process is gone. Folders of other hosts (a cache on a
shared disk) are left to their own host, unless they are older than `STALE_S`; folders without an
owner in their name likewise.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from pad_lightning.runtime.locks import alive

PREFIX = ".building-"
STALE_S = 7 * 24 * 3600  # a staging folder of another host (or unnamed) this old is abandoned


def new_staging(parent: Path) -> Path:
    """A new, empty staging folder under `parent` named after this process."""
    return Path(
        tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}@{socket.gethostname()}@", dir=parent)
    )


def owner(path: Path) -> tuple[int, str] | None:
    """(pid, host) of the process that made a staging folder, or None for a name without one."""
    name = path.name[len(PREFIX) :]
    parts = name.split("@")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), "@".join(parts[1:-1])


def sweep_stale(parent: Path, now: float | None = None) -> list[Path]:
    """Remove the staging folders under `parent` whose builder is gone; the removed paths."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return removed
    for path in candidates:
        made_by = owner(path)
        if made_by is not None and made_by[1] == host:
            stale = made_by[0] != os.getpid() and not alive(made_by[0])
        else:
            try:
                stale = now - path.stat().st_mtime > STALE_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed
