"""Files written atomically: a crash leaves the old file or the new one, never a part."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield `<path>.partial` to be written; when the block ends without an error it is renamed
    over `path` (an error, a kill or a crash inside the block leaves `path` as it was)."""
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        if err.filename:
            raise
        # a write that failed (a full disk) names no file: name the one being written
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_atomic(path: Path, text: str, encoding: str | None = None) -> None:
    """Write a text file so that a crash leaves the old or the new file, never a part."""
    with replaced_atomically(path) as partial:
        partial.write_text(text, encoding=encoding)
