"""The one error hierarchy: every failure a user can cause is a `PadError` with a kind.

Each layer raises the subclass for its kind; the application (`app.main`) turns any of them into
one line `<kind> error: <message>` on stderr and a non-zero exit status. Messages are one line
that names the key or file and what would be valid.
"""

from __future__ import annotations

KINDS = ("config", "data", "model", "checkpoint", "training", "export")


class PadError(Exception):
    """A failure with a one-line message; `kind` (one of KINDS) names what to fix."""

    kind = "config"

    def line(self) -> str:
        """The one line printed for it: `<kind> error: <message>`."""
        return f"{self.kind} error: {self}"


class ConfigError(PadError, ValueError):
    """A bad config value; the message is one line and names the key."""

    kind = "config"


class DataError(PadError, ValueError):
    """A bad prompt source or data key; the message is one line naming the key or file."""

    kind = "data"


class CheckpointError(PadError, ValueError):
    """An unreadable checkpoint; the message is one line naming the file."""

    kind = "checkpoint"


class TrainingDiverged(PadError, RuntimeError):
    """Training produced non-finite values; the message is one line."""

    kind = "training"


class NonFiniteScoresError(PadError, ValueError):
    """Student or teacher scores hold NaN or +-inf; the message is one line naming the side."""

    kind = "training"


class ServiceError(PadError, RuntimeError):
    """A model server (the teacher's, the rollout engine's) that cannot be reached, times out
    past its retries, or answers what cannot be used; the message is one line naming its URL."""

    kind = "training"


class ModelError(PadError, ValueError):
    """A model folder, tokenizer or chat template that cannot be used; one line naming it."""

    kind = "model"


class ExportError(PadError, ValueError):
    """Bad input to an export (question file, model folder, run id); the message is one line."""

    kind = "export"


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def described(err: BaseException) -> str:
    """`Type: first line of the message` of an exception (`Type` alone when it has none)."""
    first = first_line(err)
    return first if first == type(err).__name__ else f"{type(err).__name__}: {first}"
