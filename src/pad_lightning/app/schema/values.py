"""Checks of single config values: each failure is one ConfigError line naming the key, the value
and what is valid."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pad_lightning.runtime.errors import ConfigError


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


def one_of(value, key: str, valid) -> None:
    """Require `value` in `valid`: `key=value: valid: a, b, c`."""
    require(value in valid, f"{key}={value!r}: valid: {', '.join(valid)}")


def flag(value, key: str) -> None:
    """Require a boolean: `key=value: valid: true, false`."""
    require(isinstance(value, bool), f"{key}={value!r}: valid: true, false")


def is_number(value, integer: bool = False) -> bool:
    """An int (or float, unless `integer`), never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float)


def number(
    value,
    key: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    null: bool = False,
    note: str = "",
):
    """Require a number (an integer if `integer`) in [low, high] (open ends as flagged); `null`
    allows None. The message names the key, the value and what is valid."""
    if value is None and null:
        return value
    lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    if low is not None and high is not None:
        want = f"in {lo}, {hi}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high:g}"
    else:
        want = ""
    what = f"{'an integer' if integer else 'a number'}{' ' + want if want else ''}"
    what += " or null" if null else ""
    ok = is_number(value, integer)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    require(ok, f"{key}={value!r}: must be {what}{note}")
    return value


def writable_dir_problem(path: Path) -> str | None:
    """None if `path` can be created (if missing) and a file written in it, else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__
