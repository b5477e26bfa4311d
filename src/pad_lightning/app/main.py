"""The Hydra job behind `python -m pad_lightning.run`: one place that turns every expected
failure (`runtime.errors.PadError`, Hydra and OmegaConf errors, an unwritable file) into its one
line and exit status, resume and sweep bookkeeping, and the run directory resolver.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pad_lightning.app.checks import check
from pad_lightning.app.schema.moved import MOVED
from pad_lightning.runtime import interrupts
from pad_lightning.runtime.errors import ConfigError, PadError, ServiceError

warnings.filterwarnings(
    "ignore",
    message=r".*(LeafSpec|litlogger|does not have many workers|in eval mode at the start|`IterableDataset` has `__len__`).*",
)
_unique: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """Create `path` (or the first free `path-2`, `path-3`, ...) and return it; the same answer
    for the same `path` within a process (Hydra resolves the run directory more than once)."""
    if path not in _unique:
        base = Path(path)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for i in itertools.count(1):
                candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                _unique[path] = str(candidate)
                break
        except OSError as err:
            raise ConfigError(
                f"hydra.run.dir={path!r}: cannot create the run directory ({err.strerror}); "
                "run from a writable directory or set hydra.run.dir"
            ) from None
    return _unique[path]


OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True, replace=True)


def hydra_message(err: BaseException) -> str:
    """One line from Hydra's or OmegaConf's multi-line message (options listed as `valid:`)."""
    if isinstance(err.__cause__, ConfigError) or isinstance(err, ConfigError):
        return str(err.__cause__ if isinstance(err.__cause__, ConfigError) else err)
    for old, new in MOVED.items():
        if f"Could not override '{old}'" in str(err):
            return f"{old}: moved; use {new}"
    lines = str(err).splitlines()
    head, options, in_options = [], [], False
    for line in lines:
        if line.startswith("Available options in"):
            in_options = True
        elif in_options and line.startswith("\t"):
            options.append(line.strip())
        elif line.startswith("Config search path"):
            break
        elif line.strip() and not line.startswith((" ", "\t")):
            in_options = False
            head.append(line.strip().rstrip("."))
    text = "; ".join(head) or type(err).__name__
    return f"{text}; valid: {', '.join(options)}" if options else text


def one_line_config_errors() -> None:
    """Hydra prints composition errors (an unknown group option, a bad override) on several lines
    with a hint about HYDRA_FULL_ERROR; make them one `config error:` line like ours."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import HydraException

    keep_run_records()
    original = hydra_utils.run_and_report
    if getattr(original, "_pad_lightning", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except (HydraException, OmegaConfBaseException) as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                sys.exit(f"config error: {hydra_message(err)}")
            except OSError as err:  # Hydra creating the run directory or writing .hydra/ there
                sys.exit(
                    f"config error: hydra.run.dir: cannot write {err.filename} ({err.strerror}); "
                    "run from a writable directory or set hydra.run.dir"
                )

        return original(guarded)

    run_and_report._pad_lightning = True
    hydra_utils.run_and_report = run_and_report


def keep_run_records() -> None:
    """Hydra writes the job's config and overrides to `<run dir>/.hydra/` before the job starts,
    so before the run folder is locked; in a folder that already holds a run (a resume given its
    own hydra.run.dir, or a new run that will be refused the folder) that would replace the
    record of the command that made the run. There Hydra writes nothing."""
    import hydra.core.utils as hydra_core

    original = hydra_core._save_config
    if getattr(original, "_pad_lightning", False):
        return

    def save_config(cfg, filename: str, output_dir) -> None:
        from pad_lightning.app.resume import holds_run

        if holds_run(Path(output_dir)) or holds_run(Path(output_dir).parent):
            return
        original(cfg, filename, output_dir)

    save_config._pad_lightning = True
    hydra_core._save_config = save_config


SWEEP_JOB_ENV = "PAD_LIGHTNING_SWEEP_JOB"


def _spawns_ranks(cfg: DictConfig) -> bool:
    """Whether Lightning will start extra processes for this job (DDP/FSDP on one machine; not
    under SLURM or torchrun, which start every rank themselves)."""
    external = ("LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID")
    devices = cfg.trainer.devices
    return str(devices) not in ("1", "[0]") and not any(k in os.environ for k in external)


def _job_in_own_process(cfg: DictConfig, hydra_cfg, sweep: dict, overrides: list[str]):
    """Run one job of a `--multirun` as a fresh `python -m pad_lightning.run` (a single run in
    the job's directory, nested under the sweep's MLflow parent) and return its optimized metric.

    Lightning starts the extra ranks of a multi-process job by re-running the command line and
    keeps its process group for the life of the process: inside one sweep process the second
    job would find the first job's (exited) ranks. A process per job gives each its own."""
    import subprocess

    from hydra.utils import get_original_cwd

    from pad_lightning.app.sweep import record_failure

    job_dir = hydra_cfg.runtime.output_dir
    command = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        *overrides,
        f"hydra.run.dir={json.dumps(job_dir)}",
        "hydra.output_subdir=null",  # the sweep already wrote the job's .hydra/
    ]
    env = dict(os.environ, **{SWEEP_JOB_ENV: json.dumps(sweep)})
    child = subprocess.Popen(command, env=env, cwd=get_original_cwd())
    try:
        code = child.wait()
    except (interrupts.Preempted, KeyboardInterrupt):
        child.terminate()  # SIGTERM: the job stops at the end of its step, keeps its checkpoint
        child.wait()
        raise
    for stop in (signal.SIGTERM, signal.SIGINT):  # stopped: the whole sweep stops, as it would
        if code in (128 + stop, -stop):  # for a job in this process
            raise interrupts.Preempted(stop)
    summary = Path(job_dir) / "summary.json"
    if code != 0 or not summary.is_file():
        record_failure(sweep["job"], overrides, f"exit status {code} (its error is printed above)")
        return None
    return optimized_value(json.loads(summary.read_text()), cfg.optimized_metric)  # in a sweep


def optimized_value(summary: dict, name: str | None, in_sweep: bool = True) -> float | None:
    """The summary metric `optimized_metric` names (`val/<metric>`, `after/<metric>`,
    `delta/<metric>`) that the run returns to Hydra: what a sweeper that optimises (Optuna)
    maximises or minimises. None when the run did not measure it, with a line on stderr saying
    why in a sweep (a single run has no use for the value, so it says nothing)."""
    if not name:
        return None
    part, _, metric = str(name).partition("/")
    measured = summary.get(part) if isinstance(summary.get(part), dict) else {}
    value = measured.get(metric)
    if value is None and in_sweep:
        print(f"optimized_metric={name}: {_not_measured(part, metric, measured)}", file=sys.stderr)
    return None if value is None else float(value)


def _not_measured(part: str, metric: str, measured: dict) -> str:
    """Why a run has no `<part>/<metric>`: no validation ran, or it ran without that metric."""
    if not measured:
        if part == "val":
            return (
                "not measured by this run (validation runs every trainer.val_every_n_epochs "
                "epochs; val/* needs one during the fit)"
            )
        return f"not measured by this run (it logged no {part}/* metrics)"
    why = ""
    if metric in ("exact_match", "quality"):
        why = " (it needs reference answers, which these prompts do not have)"
    return f"not measured by this run{why}; measured: {', '.join(sorted(measured))}"


RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # as Lightning reads it


def _global_rank() -> int:
    """This process's global rank as Lightning will see it (0 for the launching process; the
    ranks Lightning, torchrun or SLURM start have it in their environment)."""
    for key in RANK_ENV:
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


def run_job(cfg: DictConfig) -> float | None:
    """One Hydra job: resume or check the config, run the experiment, turn every expected
    failure into its one line (`PadError.line`), and return the optimised metric. The run
    folder is locked for the job's duration (`app.resume.claim_run_folder`)."""
    held: list = []
    try:
        return _run_job(cfg, held)
    finally:
        from pad_lightning.engines.vllm_server import stop_all

        stop_all()  # the servers this run started (a served teacher, the rollout engine)
        for lock in held:
            lock.release()


def _run_job(cfg: DictConfig, held: list) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pad_lightning.app.resume import RunFinished, claim_run_folder, resumed_config
    from pad_lightning.tracking.mlflow_run import absolute_tracking_uri, open_store, store_error

    interrupts.install()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    sweep = None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        from pad_lightning.app.sweep import parent_info

        sweep = {"dir": str(Path(hydra_cfg.sweep.dir).resolve()), "job": hydra_cfg.job.num}
        parent = parent_info(sweep["dir"])
        if parent is not None:
            sweep["parent_run_id"] = parent["run_id"]
            sweep["swept"] = parent.get("swept", [])
        if _spawns_ranks(cfg):
            return _job_in_own_process(cfg, hydra_cfg, sweep, overrides)
    elif os.environ.get(SWEEP_JOB_ENV):  # one multi-process job of a sweep (_job_in_own_process)
        sweep = {**json.loads(os.environ[SWEEP_JOB_ENV]), "own_process": True}

    def fail(message: str) -> None:
        """End this run with one line; in a sweep, note the failed job and go on to the next."""
        if sweep is None or sweep.get("own_process"):
            sys.exit(message)
        from pad_lightning.app.sweep import record_failure

        record_failure(sweep["job"], overrides, message)

    state = None
    owner = _global_rank() == 0  # the other ranks of a DDP/FSDP run share rank 0's folder
    try:
        if cfg.resume:
            run_dir = Path(str(cfg.resume))
            if owner:  # refused before locking (nothing written): a bad folder, a finished run
                resumed_config(run_dir, cfg, overrides)
                held.append(claim_run_folder(run_dir, resuming=True))
            cfg, state = resumed_config(run_dir, cfg, overrides)  # read under the lock
            overrides = state.get("overrides", [])
        else:
            if owner:
                held.append(claim_run_folder(Path(str(cfg.output_dir)), resuming=False))
            cfg.logger.tracking_uri = absolute_tracking_uri(str(cfg.logger.tracking_uri))
        cfg = check(cfg)  # every key present from here on (absent ones at their default)
        if owner:  # created here (a new database, under its lock), before any model loads
            open_store(str(cfg.logger.tracking_uri), str(cfg.logger.experiment_name))
    except RunFinished as note:
        print(note)
        return
    except PadError as err:
        return fail(err.line())
    except OmegaConfBaseException as err:
        return fail(f"config error: {getattr(err, 'full_key', '') or ''}: {hydra_message(err)}")
    from pad_lightning.app.experiment import run_experiment

    try:
        summary_path = run_experiment(cfg, overrides, state, sweep)
    except PadError as err:  # config found while loading, data, model, checkpoint, training
        if (
            isinstance(err, ServiceError)
            and (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists()
        ):
            return fail(
                f"{err.line()}; the run keeps its last checkpoint: once the server answers, "
                f"resume with: python -m pad_lightning.run resume={cfg.output_dir}"
            )
        return fail(err.line())
    except (interrupts.Preempted, KeyboardInterrupt) as stop:
        if isinstance(stop, KeyboardInterrupt):  # Ctrl-C before the run was set up
            stop = interrupts.Preempted(signal.SIGINT)
        if sweep is not None:  # the whole sweep stops
            from pad_lightning.app.sweep import set_parent_status

            set_parent_status(sweep["dir"], "KILLED")
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank != 0:  # rank 0 says it once
            sys.exit(stop.exit_code)
        if (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists():
            print(
                f"stopped by {stop}; the run keeps its last checkpoint. Resume with: "
                f"python -m pad_lightning.run resume={cfg.output_dir}",
                file=sys.stderr,
            )
        else:
            print(
                f"stopped by {stop} before the first checkpoint; nothing to resume", file=sys.stderr
            )
        sys.exit(stop.exit_code)
    except OSError as err:  # disk full, a file made read-only mid-run
        where = f"{err.filename}: " if err.filename else ""
        return fail(f"error: {where}{err.strerror or err}")
    except Exception as err:  # the tracking store failed mid-run (e.g. its disk is full)
        reason = store_error(err)
        if reason is None:
            raise
        uri = str(cfg.logger.tracking_uri)
        where = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else uri
        return fail(f"error: {where}: {reason} (the MLflow store, logger.tracking_uri)")
    if summary_path is not None:  # global rank 0
        print(summary_path)
        return optimized_value(
            json.loads(summary_path.read_text()), cfg.optimized_metric, in_sweep=sweep is not None
        )
    return None
