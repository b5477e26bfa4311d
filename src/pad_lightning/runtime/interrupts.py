"""Stopping a run from outside: SIGTERM (preemption, `kill`), SIGINT (Ctrl-C), and injected faults.

* SIGTERM anywhere in a run sets a flag. Inside `trainer.fit`/`trainer.test` Lightning's own
  handler (which runs alongside ours) stops at the end of the current batch, so no optimizer step
  is cut in half, and leaving the trainer call raises `Preempted`; outside them (model loading,
  reporting) the handler itself raises it. The run then exits with status
  143 (128 + SIGTERM), marked KILLED in MLflow, and prints how to resume.
* `PAD_LIGHTNING_FAULT=<point>:<k>` kills the process with SIGKILL the k-th time `fault(point)`
  is reached (k = 1 if omitted). The reliability tests use it to crash a run at exact places
  (during a rollout, a step, a checkpoint write, the final evaluation) and check that resuming
  gives the same result as an uninterrupted run. Unset, `fault` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_ENV = "PAD_LIGHTNING_FAULT"
FAULT_POINTS = ("rollout", "step", "checkpoint_write", "checkpoint_saved", "final_eval", "report")
_hits: Counter = Counter()
_state: dict = {"signal": None, "in_trainer": False}


class Preempted(BaseException):
    """The run received SIGTERM (or SIGINT) and stopped; it can be resumed."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_sigterm(signum, frame) -> None:
    _state["signal"] = signum
    if not _state["in_trainer"]:
        raise Preempted(signum)


def _on_sigint(signum, frame) -> None:
    _state["signal"] = signum
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM and SIGINT through this module for the rest of the process (call once at
    start-up). An inherited ignored SIGINT (a background job) stays ignored."""
    _state["signal"] = None
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


class in_trainer:
    """Context of a Lightning trainer call. SIGTERM only sets the flag there: Lightning's own
    handler stops at the end of the current batch and raises its SIGTERMException, and Ctrl-C
    becomes Lightning's sys.exit(1) after a graceful shutdown. On leaving, either (or a signal
    that Lightning let pass, e.g. during the last evaluation batch) raises `Preempted`."""

    def __enter__(self):
        _state["in_trainer"] = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _state["in_trainer"] = False
        if _state["signal"] is not None and (exc_type is None or issubclass(exc_type, SystemExit)):
            raise Preempted(_state["signal"]) from exc


def fault(point: str) -> None:
    """SIGKILL this process at the configured fault point (testing hook; see module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
