"""MLflow tracking of one run: where it is stored, its status, and when metrics are committed.

* The tracking URI is made absolute at start-up (`sqlite:///mlflow.db` -> the file in the
  directory the run started from), so `resume=` works from any directory.
* The run's status is set by the experiment, never by Lightning: Lightning's MLflow logger marks
  the run FINISHED at the end of every `trainer.test`/`trainer.fit`, i.e. before training even
  starts. Here a run is RUNNING while it works, FINISHED only after its report is written,
  FAILED on an error and KILLED on SIGTERM/SIGINT. A process killed with SIGKILL stays RUNNING:
  it never looks finished.
* Metrics logged during `fit` are held back and committed when a checkpoint has been written
  (`commit`). A run stopped between two checkpoints resumes from the last one and logs the steps
  after it again; holding them back means every step is in MLflow exactly once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

LOCAL_SCHEMES = ("sqlite:///", "file://")


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """`uri` with a relative local path made absolute against `base` (default: the cwd)."""
    base = Path.cwd() if base is None else base
    for scheme in LOCAL_SCHEMES:
        if uri.startswith(scheme):
            path = uri[len(scheme) :]
            if path and not path.startswith("/"):
                return scheme + str((base / path).resolve())
            return uri
    if "://" not in uri and uri:  # a plain folder path
        return str((base / uri).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def tracking_problem(uri: str) -> str | None:
    """Why a local sqlite tracking store cannot be written, or None. (Checked at start-up: MLflow
    itself retries a read-only database for about two minutes before failing.)"""
    path = sqlite_path(uri)
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        return f"{uri}: its folder {folder} does not exist"
    try:  # sqlite writes a journal file next to the database
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{uri}: its folder {folder} is not writable ({err.strerror})"
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as err:
            return f"{uri}: the database file {path} is not writable ({err.strerror})"
    return None


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger with the run status and metric commits described above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hold_metrics = False
        self._held: list[tuple[dict, int | None]] = []

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if self.hold_metrics:
            self._held.append((dict(metrics), step))
        else:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def commit(self) -> None:
        """Write the held metrics to MLflow (called once a checkpoint is safely on disk)."""
        held, self._held = self._held, []
        for metrics, step in held:
            super().log_metrics(metrics, step)

    def discard(self) -> int:
        """Drop the held metrics (their steps will be run and logged again on resume)."""
        count, self._held = len(self._held), []
        return count

    def finalize(self, status: str = "success") -> None:
        """Lightning calls this after every trainer.fit/test; the experiment sets the status."""

    @rank_zero_only
    def set_status(self, status: str) -> None:
        """RUNNING, FINISHED, FAILED or KILLED (terminal ones also record the end time)."""
        if status == "RUNNING":
            self.experiment.update_run(self.run_id, status="RUNNING")
        else:
            self.experiment.set_terminated(self.run_id, status)
