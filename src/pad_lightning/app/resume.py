"""`resume=<run dir>`: the saved config of a stopped run, with the overrides that are safe to change.

A run directory holds `config.yaml` (the resolved config), `run_state.json` (overrides, MLflow run
id, status, the schedule's length) and `checkpoints/`. Resuming continues the same MLflow run from
the newest readable checkpoint. Overrides given next to `resume=` are applied if they cannot change
what the finished run means (`SAFE`), ignored if they repeat the saved value (or the run's own
overrides), and refused by name otherwise. A finished run is not resumed: nothing is changed.

One run folder, one process: the process that runs or resumes a folder holds the lock
`run.lock` in it (`claim_run_folder`; the kernel releases it when the process ends, SIGKILL
included). A second resume, a resume of a run still in progress, or a new run given the same
`hydra.run.dir` is refused with one line naming the process; a new run is also refused a folder
that already holds a run (`run_state.json` or `summary.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pad_lightning.app.schema.moved import upgraded
from pad_lightning.runtime.errors import ConfigError
from pad_lightning.runtime.locks import RUN_LOCK, FileLock, try_lock
from pad_lightning.tracking.mlflow_run import absolute_tracking_uri

SAFE = (
    "trainer.max_epochs",  # train longer (the learning-rate schedule keeps its planned length)
    "trainer.num_threads",
    "logger.print_time_every",
    "logger.log_rollouts_every",
)


_ABSENT = object()


class RunFinished(Exception):
    """The run directory holds a finished run; the message says so."""


RUN_FILES = ("run_state.json", "summary.json")  # a folder with either holds a run


def holds_run(folder: Path) -> str | None:
    """The file that shows `folder` holds a run (run_state.json or summary.json), or None."""
    return next((name for name in RUN_FILES if (Path(folder) / name).is_file()), None)


def claim_run_folder(run_dir: Path, resuming: bool) -> FileLock:
    """Lock `run_dir` for this process (held until `release` or the process ends), before
    anything is written in it; a one-line ConfigError if another live process holds it, or if a
    new run (`resuming` False) is pointed at a folder that already holds a run."""
    run_dir = Path(run_dir)
    key = f"resume={str(run_dir)!r}" if resuming else f"hydra.run.dir={str(run_dir)!r}"
    occupied = (
        f"{key}: already holds a run ({{}}); continue it with resume={run_dir}, or choose "
        "another hydra.run.dir"
    )
    found = None if resuming else holds_run(run_dir)
    if found and not (run_dir / RUN_LOCK).exists():  # refused without touching the folder
        raise ConfigError(occupied.format(found))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # a folder named by output_dir= may not exist
        lock = try_lock(run_dir / RUN_LOCK)
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot lock the run folder ({run_dir / RUN_LOCK}: {err.strerror or err})"
        ) from None
    if not isinstance(lock, FileLock):
        who = f"process {lock}" if lock else "another process"
        if resuming:
            raise ConfigError(
                f"{key}: the run is in use by {who} (it holds {RUN_LOCK}: the run is still "
                "going, or being resumed); wait for it to end or stop it, then resume"
            )
        raise ConfigError(
            f"{key}: the folder is in use by {who} (a run in progress holds {RUN_LOCK}); "
            "choose another hydra.run.dir"
        )
    if not resuming and (found := holds_run(run_dir)):  # a run that ended since the first look
        lock.release()
        raise ConfigError(occupied.format(found))
    lock.record_owner()
    return lock


def read_state(run_dir: Path) -> dict:
    """run_state.json of a run directory, or a one-line ConfigError."""
    where = f"resume={str(run_dir)!r}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"{where}: a file, not a directory; resume takes a run directory written by "
            "pad_lightning.run (outputs/<date>/<time>)"
        )
    if not run_dir.is_dir():
        raise ConfigError(f"{where}: no such directory")
    for name in ("config.yaml", "run_state.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{where}: no {name}; resume takes a run directory written by pad_lightning.run "
                "(outputs/<date>/<time>)"
            )
    try:
        state = json.loads((run_dir / "run_state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{run_dir / 'run_state.json'}: not valid JSON ({err})") from None
    if not isinstance(state, dict) or not state.get("mlflow_run_id"):
        raise ConfigError(
            f"{run_dir / 'run_state.json'}: has no MLflow run id (the run stopped before "
            "it was created); start a new run"
        )
    return state


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def resumed_config(
    run_dir: Path, composed: DictConfig, overrides: list[str]
) -> tuple[DictConfig, dict]:
    """(config to run, run state) for `resume=run_dir` with the command line's `overrides`.

    `composed` is the config Hydra composed from this command line (defaults + overrides).
    """
    state = read_state(run_dir)
    if state.get("status") == "FINISHED" and (run_dir / "summary.json").exists():
        raise RunFinished(
            f"run {run_dir} is finished (summary.json, MLflow run {state['mlflow_run_id']}); "
            "nothing to resume, nothing changed. Start a new run to train more"
        )
    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
    except Exception as err:
        raise ConfigError(f"{run_dir / 'config.yaml'}: cannot be read ({err})") from None
    if not isinstance(saved, DictConfig):
        raise ConfigError(f"{run_dir / 'config.yaml'}: not a run config (a list, not keys)")
    saved = upgraded(saved)  # keys an older version wrote, at their new place
    own = set(state.get("overrides", []))
    refused = []
    for override in _parse([o for o in overrides if not o.startswith("resume=")]):
        key, text = override.key_or_group, override.input_line
        if text in own:
            continue
        if key in SAFE:
            OmegaConf.update(saved, key, OmegaConf.select(composed, key), merge=False)
            continue
        new, old = OmegaConf.select(composed, key), OmegaConf.select(saved, key, default=_ABSENT)
        if key == "logger.tracking_uri" and isinstance(new, str):
            new = absolute_tracking_uri(new)
        # a config group (loss=vpd, experiment=smoke) or a changed value
        if old is _ABSENT or isinstance(old, DictConfig) or new != old:
            refused.append(text)
    if refused:
        raise ConfigError(
            f"resume={str(run_dir)!r}: cannot change {', '.join(refused)} of a stopped run "
            f"(only {', '.join(SAFE)} can change on resume); start a new run instead"
        )
    saved.resume = str(run_dir)
    saved.output_dir = str(run_dir)
    return saved, state


def check_epochs(ckpt_path: Path, max_epochs: int) -> None:
    """Refuse, before anything loads or changes, a `trainer.max_epochs` below the epochs the
    checkpoint has already trained (Lightning would stop with a traceback and the run would
    be marked FAILED). The checkpoint is memory-mapped: only its small header is read."""
    from pad_lightning.training.checkpoints import read_header

    ckpt = read_header(ckpt_path)
    done = int(ckpt["epoch"]) + 1  # saved at the end of epoch `epoch`
    if done > max_epochs:
        raise ConfigError(
            f"trainer.max_epochs={max_epochs}: the run has already trained {done} epochs "
            f"({Path(ckpt_path).name}); resume with trainer.max_epochs >= {done}, or without it"
        )
