"""Locks between processes, on files: kernel `flock` locks, which a process that dies (even by
SIGKILL) releases with it, so a lock is never left held by a crashed run.

* `exclusive(path)` waits for the lock on `path` and holds it for a block (the first creation of
  an MLflow sqlite database: a second process waits, then opens the finished database).
* `try_lock(path)` takes the lock on `path` without waiting, or says which live process holds it
  (one run folder, one process: `RUN_LOCK` in the run folder). The holder writes its pid into the
  file (`FileLock.record_owner`) so that a refused process can name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_LOCK = "run.lock"  # in a run folder: held by the one process that runs or resumes it
# a file system without locks (some network mounts): nothing is locked there
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class FileLock:
    """A held `flock` lock on an open file; `release` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def record_owner(self) -> None:
        """Write this process's pid into the lock file (read by `holder` in a refused process)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            # LOCK_UN also for copies of the descriptor in forked children (data loader workers);
            # OSError: a file system without locks
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def holder(path: Path) -> int | None:
    """The pid recorded in a lock file, if that process is alive (else None: unknown)."""
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and alive(pid) else None


def try_lock(path: Path) -> FileLock | int | None:
    """Take the lock on `path` (created if missing) without waiting: the `FileLock`, or, when
    another process holds it, that process's pid (None if it has not recorded one yet).
    OSError if the file cannot be opened."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return holder(path)
    except OSError as err:
        if err.errno in NO_LOCKS:
            return FileLock(path, fd)  # not locked: the file system cannot
        os.close(fd)
        raise
    return FileLock(path, fd)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock on `path` (created if missing) for a block, waiting for it if needed."""
    fd = os.open(Path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in NO_LOCKS:
                raise
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
