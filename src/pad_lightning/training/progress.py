"""The terminal display of a run: one overall bar over epochs with its ETA, and the phase now
running (generation, teacher scoring, calibration, training, validation, test) beside a spinner.

On a terminal it is a live rich display; when output is piped or redirected nothing is redrawn
(the periodic time lines of `callbacks.RolloutLogger`, which carry the ETA, stand in for it).
Code that does long work marks it with `phase("...")`; that is a no-op without an active display.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from lightning.pytorch.callbacks import ProgressBar
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers.utils import logging as hf_logging


class _DropNoise(logging.Filter):
    """Lightning's advertising tip, its device lines (`GPU available: False` ...), its
    "`Trainer.fit` stopped" notice and its per-rank SIGTERM notice: the run prints its own."""

    NOISE = (
        "litlogger",
        "Received SIGTERM",
        "Bypassing SIGTERM",
        "GPU available:",
        "TPU available:",
        "HPU available:",
        "`Trainer.fit` stopped",
        "Detected KeyboardInterrupt",  # Ctrl-C: the run (or the zoo build) says it stopped
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_libraries() -> None:
    """Library chatter a run does not show: Lightning's tip and per-rank SIGTERM notice (the run
    prints its own lines), MLflow's system-metrics start/stop notices, transformers' per-file
    bars (the run has its own display)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


_active: RunProgress | None = None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Show `name` as the current phase while the block runs (nested phases restore the outer)."""
    display = _active
    if display is None:
        yield
        return
    previous = display.phase_name
    display.set_phase(name)
    try:
        yield
    finally:
        display.set_phase(previous)


def eta_text(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunProgress(ProgressBar):
    """Lightning progress bar replacement: epochs of the whole fit (not batches of one epoch),
    the last training loss, validation exact match, and the current phase. No `v_num`."""

    def __init__(self, console: Console | None = None, live: bool | None = None):
        super().__init__()
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.phase_name = "starting"
        self._stage = ""  # "test (before training): ", "validation: " or "" (training)
        self._progress: Progress | None = None
        self._task = None
        self._enabled = True
        self._epoch_started = 0.0
        self.epoch_seconds: list[float] = []

    # -- lifecycle (the experiment opens and closes the display around all trainer calls) ----
    def __enter__(self) -> RunProgress:
        global _active
        _active = self
        return self

    def _start(self) -> None:
        """Start drawing (at the first trainer call: after Lightning's start-up lines, which
        would otherwise be printed into the middle of the bar)."""
        if not self.live or self._progress is not None:
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.phase_name, total=None, info="")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._start()

    def __exit__(self, *exc) -> None:
        global _active
        if _active is self:
            _active = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- what the display shows ----------------------------------------------------------------
    def set_phase(self, name: str) -> None:
        self.phase_name = name
        if self._progress is not None:
            self._progress.update(self._task, description=self._stage + name)

    def _info(self, trainer) -> str:
        metrics = trainer.callback_metrics
        parts = []
        for key, label in (("train/loss", "loss"), ("val/exact_match", "val EM")):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.4f}")
        return "  ".join(parts)

    def eta_seconds(self, done: int, total: int) -> float | None:
        """Mean epoch time of this process times the epochs left (None before one is done)."""
        if not self.epoch_seconds:
            return None
        recent = self.epoch_seconds[-20:]
        return sum(recent) / len(recent) * max(0, total - done)

    # -- ProgressBar API -------------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, total=trainer.max_epochs, completed=trainer.current_epoch
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = time.perf_counter()
        self._stage = ""
        self.set_phase("training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=self._info(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        if self._progress is not None:
            self._progress.update(
                self._task, completed=trainer.current_epoch + 1, info=self._info(trainer)
            )

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stage = "validation: "
        self.set_phase("")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._stage = ""
        self.set_phase("training")

    def on_test_start(self, trainer, pl_module) -> None:
        self._stage = f"test ({'after' if trainer.global_step else 'before'} training): "
        self.set_phase("")

    def on_test_end(self, trainer, pl_module) -> None:
        self._stage = ""
        self.set_phase("")


class StepsProgress(ProgressBar):
    """A bar over the optimizer steps of a step-limited fit (the zoo's SFT): `step k/N`, elapsed,
    ETA and the last loss. Drawn on a terminal only (a piped run prints its own step lines)."""

    def __init__(self, label: str, console: Console | None = None, live: bool | None = None):
        super().__init__()
        self.label = label
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._task = None

    def disable(self) -> None:
        self.live = False

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.live:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=trainer.max_steps, info="")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is None:
            return
        loss = trainer.callback_metrics.get("sft/loss")
        info = f"loss {float(loss):.4f}" if loss is not None else ""
        self._progress.update(self._task, completed=trainer.global_step, info=info)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.on_fit_end(trainer, pl_module)
