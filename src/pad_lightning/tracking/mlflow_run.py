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
  after it again; holding them back means every step is in MLflow exactly once. The held metrics
  also travel inside the checkpoint (`checkpointing.RollingCheckpoint`), and each commit sets the
  run tag `pad_lightning.committed_step` in the same database transaction; a resumed run writes
  its checkpoint's metrics unless that tag says they were written (`commit_carried`). A kill
  between writing a checkpoint and committing its metrics loses nothing and duplicates nothing.
* A resumed run never logs a value twice: it counts what MLflow already holds per (metric, step)
  (`skip_logged`) and does not log those again, so steps that a resume redoes after falling
  back to an older checkpoint, or final test values of a run that failed after logging them,
  are in MLflow once.
* A new sqlite database is created under an exclusive lock on `<db>.lock` (`store_lock`): runs
  that start together on a missing database wait for the first to create it, instead of
  migrating it twice (which crashes both and can leave a broken database).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from pad_lightning.runtime.errors import ConfigError, first_line
from pad_lightning.runtime.locks import exclusive

LOCAL_SCHEMES = ("sqlite:///", "file://")
COMMIT_TAG = "pad_lightning.committed_step"
# MLflow 3's UI opens an experiment with this kind in its model-training view (not GenAI)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client, name: str) -> str:
    """The id of the experiment `name`, created if missing, tagged for the model-training view."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name)
        except MlflowException:  # another process created it since: use that one
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    if exp is None or exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    return exp_id


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
    """The database file of a `sqlite:///<path>` tracking URI; None for other stores."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


SQLITE_HEADER = b"SQLite format 3\x00"
MIN_FREE_BYTES = 1 << 20  # a run's database writes need more than this


def tracking_problem(uri: str) -> str | None:
    """Why a local sqlite tracking store cannot be written, or None. (Checked at start-up: MLflow
    itself retries a read-only database for about two minutes before failing.)"""
    path = sqlite_path(uri)
    if path is None:
        return None
    folder = path.parent
    if path.is_dir():
        return (
            f"{uri}: {path} is a folder; give the path of a database file (e.g. {path}/mlflow.db)"
        )
    if not folder.is_dir():
        return f"{uri}: its folder {folder} does not exist"
    try:  # sqlite writes a journal file next to the database
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{uri}: its folder {folder} is not writable ({err.strerror})"
    if path.exists():
        try:
            with open(path, "r+b") as db:
                head = db.read(len(SQLITE_HEADER))
        except OSError as err:
            return f"{uri}: the database file {path} is not writable ({err.strerror})"
        if head and head != SQLITE_HEADER:
            return (
                f"{uri}: {path} is not an SQLite database (it holds other data); give a new "
                "file name or an existing MLflow database"
            )
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
        free = stats.f_bavail * stats.f_frsize // 1024
        return f"{uri}: the disk holding {folder} is full ({free} KiB free); free space on it"
    return None


def store_lock(uri: str):
    """A block that holds the exclusive lock `<db>.lock` of a sqlite tracking URI (waiting for
    it), or does nothing for other stores. Creating or migrating a database happens inside it."""
    path = sqlite_path(uri)
    if path is None or not path.parent.is_dir():
        return contextlib.nullcontext()
    return exclusive(path.with_name(path.name + ".lock"))


def open_store(uri: str, experiment_name: str) -> None:
    """Open the tracking store once at start-up, creating it (a new sqlite database) and the
    experiment under `store_lock`; a store that cannot be opened is a one-line ConfigError
    naming logger.tracking_uri (a broken or foreign database, an unreachable server)."""
    from mlflow import MlflowClient

    # MLflow's notices while it creates or upgrades a database ("Creating initial MLflow
    # database tables..."): not news to the user, and they would precede a run's one-line error
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with store_lock(uri):
            experiment_id(MlflowClient(uri), experiment_name)
    except OSError as err:
        raise ConfigError(
            f"logger.tracking_uri={uri}: cannot open the tracking store ({err.strerror or err})"
        ) from None
    except Exception as err:  # MLflow and SQLAlchemy errors: a broken or foreign database
        if store_error(err) is None:
            raise
        raise ConfigError(
            f"logger.tracking_uri={uri}: cannot be opened as an MLflow store "
            f"({store_error(err)}); give a new file name or a working MLflow store"
        ) from None


def store_error(err: BaseException) -> str | None:
    """The reason, in one line, of an error from the tracking store (MLflow, SQLAlchemy or
    sqlite: e.g. `database or disk is full`), or None for any other error."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    seen = err
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            return str(seen).strip() or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    from sqlalchemy.exc import SQLAlchemyError

    if not isinstance(err, MlflowException | SQLAlchemyError):
        return None
    text = str(err)
    found = re.search(r"\((?:sqlite3|psycopg2|pymysql)\.\w+\) ([^\n\[]+)", text)
    return found.group(1).strip() if found else first_line(err)


NOT_NAMING = ("hydra.", "logger.", "resume=")  # overrides that say where, not what, a run is


def override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def naming_overrides(overrides: list[str]) -> list[str]:
    """The overrides that say what a run is (not where it is stored or logged)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_NAMING)]


def run_name(overrides: list[str], swept: list[str] | None = None) -> str:
    """A name that says what the run is: its overrides (`loss=vpd,n=4,seed=1`), or `default`;
    for a job of a sweep only the swept ones (`n=2,loss=ppd`: the overrides all jobs share are
    in the sweep's name, and MLflow's run list shows about 25 characters of a name).
    (Lightning would let MLflow draw a random name, after the global RNG was seeded: every run
    got the same one.)"""
    parts = naming_overrides(overrides)
    if swept:
        parts = [o for o in parts if override_key(o) in swept] or parts
    return (",".join(parts) or "default")[:250]


# The tag MLflow's UI writes when one picks a run's colour (and reads for every run it lists):
# each job of a sweep gets its own, so lines, bars and run-list dots tell the jobs apart.
RUN_COLOR_TAG = "mlflow.runColor"
JOB_COLORS = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    *("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"),
    *("#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"),
)


def job_color(job) -> str:
    """The colour of job number `job` of a sweep (20 distinct ones, then again)."""
    return JOB_COLORS[int(job) % len(JOB_COLORS)]


def run_tags(overrides: list[str], sweep: dict | None = None) -> dict[str, str]:
    """Tags of a new run: one `override.<key>` per override, the run description (its command
    line), the sweep it belongs to (`sweep.dir`, `sweep.job`, and `mlflow.parentRunId`, which
    nests the run under the sweep's parent run in the UI), its colour in the UI as a sweep's job
    (`mlflow.runColor`), and the git commit and dirty flag."""
    tags = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        tags[f"override.{key}"] = value[:5000]
    args = " ".join(overrides)
    tags["mlflow.note.content"] = f"`python -m pad_lightning.run {args}`".replace("  ", " ")
    if sweep:
        for key, value in sweep.items():
            if key == "parent_run_id":
                tags["mlflow.parentRunId"] = str(value)
            elif key == "swept":
                tags["sweep.swept"] = ",".join(value)
            else:
                tags[f"sweep.{key}"] = str(value)
        if str(sweep.get("job", "")).isdigit():
            tags[RUN_COLOR_TAG] = job_color(sweep["job"])
    tags.update(_git_tags())
    return tags


def _git_tags() -> dict[str, str]:
    """The commit of the code that ran (the package's own checkout; none when installed)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).parent,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger with the run status and metric commits described above."""

    def __init__(self, *args, **kwargs):
        uri = kwargs.get("tracking_uri", args[2] if len(args) > 2 else None)
        with store_lock(str(uri or "")):  # Lightning opens (a new database: creates) the store
            super().__init__(*args, **kwargs)
        self.hold_metrics = False
        self._held: list[tuple[dict, int | None, int]] = []  # (metrics, step, time in ms)
        self._monitor = None
        self._logged: Counter = Counter()  # (key, step) -> values MLflow holds (resumed runs)

    @property
    def experiment(self):
        if rank_zero_only.rank == 0 and not getattr(self, "_kind_set", False):
            from mlflow import MlflowClient

            self._kind_set = True  # created here (tagged) before Lightning looks it up
            with store_lock(self._tracking_uri):  # a new database is created by one process
                experiment_id(MlflowClient(self._tracking_uri), self._experiment_name)
                return super().experiment
        return super().experiment

    @rank_zero_only
    def skip_logged(self) -> int:
        """On resume: count the values MLflow already holds for this run per (metric, step);
        as many values of each are then not logged again (a resume that falls back to an older
        checkpoint redoes steps whose metrics were committed; a run that failed after its final
        test logs that test again). Returns how many values the run holds."""
        client = self.experiment
        self._logged = Counter()
        for key in client.get_run(self.run_id).data.metrics:
            for m in client.get_metric_history(self.run_id, key):
                self._logged[(key, m.step)] += 1
        return sum(self._logged.values())

    def _new(self, key: str, step: int) -> bool:
        """False (and one fewer left to skip) if MLflow already holds a value of `key` at
        `step` that this run has not matched yet; True otherwise."""
        if self._logged[(key, step)] > 0:
            self._logged[(key, step)] -= 1
            return False
        return True

    @rank_zero_only
    def start_system_metrics(self, interval_s: float = 5.0, resume: bool = False) -> None:
        """MLflow's system metrics (system/cpu_utilization_percentage, memory, disk, network;
        GPU utilisation and memory when pynvml finds GPUs) every `interval_s` seconds, until the
        run leaves RUNNING."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=interval_s,
            resume_logging=resume,
            tracking_uri=self._tracking_uri,
        )
        self._monitor.start()

    def _stop_system_metrics(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            thread = getattr(monitor, "_process", None)
            if thread is not None:
                monitor._shutdown_event.set()
                thread.join()
                # a run shorter than one sampling interval: log the sample it took (MLflow's
                # loop publishes only after a full interval, so it would log nothing)
                if getattr(monitor, "_logging_step", 1) == 0:
                    try:
                        metrics = monitor.aggregate_metrics()
                        if metrics:
                            monitor.publish_metrics(metrics)
                    except Exception:  # no sample collected: nothing to log
                        pass
            monitor.finish()

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        # Lightning adds `epoch` to every logged dict: a lone chart, redundant with the step axis
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if not metrics:
            return
        if self.hold_metrics:
            self._held.append((dict(metrics), step, int(time.time() * 1000)))
            return
        if self._logged:
            metrics = {k: v for k, v in metrics.items() if self._new(k, step or 0)}
        if metrics:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def commit(self, commit_id: int | None = None) -> None:
        """Write the held metrics to MLflow (called once a checkpoint is safely on disk). With a
        `commit_id` (the checkpoint's step) the write also sets the run tag COMMIT_TAG, in the
        same batch, so a resumed run can tell whether its checkpoint's metrics were written."""
        held, self._held = self.held(), []
        self._write(held, commit_id)

    def held(self) -> list[tuple[dict[str, float], int | None, int]]:
        """A copy of the held metrics as plain floats, with the step and the time each was
        logged (they are saved in checkpoints, and written with their own timestamps)."""
        return [({k: float(v) for k, v in m.items()}, s, t) for m, s, t in self._held]

    @rank_zero_only
    def commit_carried(self, entries: list, commit_id: int) -> bool:
        """On resume: write the metrics a checkpoint carried unless the stopped process already
        committed them (the run's COMMIT_TAG equals `commit_id`). Returns whether it wrote."""
        if self.experiment.get_run(self.run_id).data.tags.get(COMMIT_TAG) == str(commit_id):
            return False
        self._write(entries, commit_id)
        return True

    def _write(self, entries: list, commit_id: int | None) -> None:
        from mlflow.entities import Metric, RunTag

        metrics = [
            Metric(key=k, value=v, timestamp=logged_at, step=step or 0)
            for values, step, logged_at in entries
            for k, v in values.items()
            if not self._logged or self._new(k, step or 0)
        ]
        tags = [] if commit_id is None else [RunTag(COMMIT_TAG, str(commit_id))]
        # one batch (one database transaction) when it fits MLflow's limit of 1000 metrics
        chunks = [metrics[i : i + 1000] for i in range(0, len(metrics), 1000)] or [[]]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if chunk or (last and tags):
                self.experiment.log_batch(self.run_id, metrics=chunk, tags=tags if last else [])

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
            self._stop_system_metrics()
            self.experiment.set_terminated(self.run_id, status)


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def run_list_url(
    experiment_id: str,
    filter_string: str | None = None,
    order_by_metric: str | None = None,
    ascending: bool = False,
) -> str:
    """The experiment's run list in the MLflow UI (model-training view), with a search filter
    and ordered by a metric, as the page itself keeps them in its address."""
    from urllib.parse import quote, urlencode

    query = {"workflowType": "machine_learning"}
    if filter_string:
        query["searchFilter"] = filter_string
    if order_by_metric:
        query["orderByKey"] = f"metrics.`{order_by_metric}`"
        query["orderByAsc"] = str(ascending).lower()
    return f"{UI_ADDRESS}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


# + a key: a run-list view as the MLflow UI's *Share* button saves one (an experiment tag the
# page reads when its address has ?viewStateShareKey=<key>)
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def save_run_list_view(
    client,
    experiment_id: str,
    key: str,
    filter_string: str,
    order_by_metric: str,
    ascending: bool = False,
    metric_columns: tuple[str, ...] = (),
    column_width: int = 140,
) -> str:
    """Save a run-list view of the experiment (the runs matching `filter_string`, ordered by
    `order_by_metric`, with that metric and `metric_columns` shown as columns, in that order)
    under `key`, the way the UI shares one, and return its address. (The run list's address
    alone can filter and order, but not choose columns: no metric would be shown.)"""
    columns = [f"metrics.`{m}`" for m in dict.fromkeys([order_by_metric, *metric_columns])]
    state = {
        "searchFilter": filter_string,
        "orderByKey": columns[0],
        "orderByAsc": ascending,
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {c: column_width for c in columns},
    }
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
    return (
        f"{UI_ADDRESS}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={key}"
    )


def ui_hint(uri: str, logger: RunLogger) -> str:
    """How to open the run in the MLflow UI: the command, and the experiment's run list in the
    model-training view (MLflow 3.17's UI ignores the experiment-kind tag and opens experiments
    in its GenAI view unless the page asks for `workflowType=machine_learning`)."""
    store = (
        f"--backend-store-uri {uri} " if uri.startswith(LOCAL_SCHEMES) or "://" not in uri else ""
    )
    page = (
        f"http://127.0.0.1:5000/#/experiments/{logger.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    return f"open it: mlflow ui {store}-> {page}"


def parameter_counts(student, teacher) -> dict[str, int]:
    """Parameter counts of both models (params `model.*_parameters`)."""
    return {
        "model.student_parameters": sum(p.numel() for p in student.parameters()),
        "model.student_trainable_parameters": sum(
            p.numel() for p in student.parameters() if p.requires_grad
        ),
    } | _teacher_count(teacher)


def _teacher_count(teacher) -> dict[str, int]:
    """A local teacher's parameters; a served one's as stored in its folder (`parameter_count`,
    absent when unknown: never the 0 of its empty local module)."""
    if hasattr(teacher, "parameter_count"):
        count = teacher.parameter_count
        return {} if count is None else {"model.teacher_parameters": count}
    return {"model.teacher_parameters": sum(p.numel() for p in teacher.parameters())}


def _prompt_text(prompt) -> str:
    import json

    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


@rank_zero_only
def log_datasets(logger: RunLogger, data_cfg, datamodule) -> None:
    """The train pool, validation and test prompt sets as MLflow dataset inputs (Datasets
    column of the run list, with their digests), context tags train / validation / test."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, problems in (
        ("train", datamodule.train_problems),
        ("validation", datamodule.val_problems),
        ("test", datamodule.test_problems),
    ):
        frame = pd.DataFrame(
            {
                "prompt": [_prompt_text(p.prompt) for p in problems],
                "reference": [getattr(p, "reference", None) for p in problems],
            }
        )
        dataset = mlflow.data.from_pandas(frame, name=f"{data_cfg.name}-{context}")
        tag = InputTag(key="mlflow.data.context", value=context)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[tag]))
    logger.experiment.log_inputs(logger.run_id, datasets=inputs)


LOGGED_TABLES_TAG = "mlflow.loggedArtifacts"  # the run's tables, as MLflow's log_table lists them


@rank_zero_only
def log_first_table(logger: RunLogger, rows: list[dict], columns, artifact_file: str) -> None:
    """`rows` as the MLflow table `artifact_file` (replacing a table of that name, e.g. one a
    stopped run logged before it was resumed), listed first among the run's tables: MLflow's
    evaluation view opens on the first table of the first run it shows."""
    client, run_id = logger.experiment, logger.run_id
    table = {"columns": list(columns), "data": [[row.get(c) for c in columns] for row in rows]}
    client.log_dict(run_id, table, artifact_file)
    entry = {"path": artifact_file, "type": "table"}
    listed = json.loads(client.get_run(run_id).data.tags.get(LOGGED_TABLES_TAG, "[]"))
    client.set_tag(
        run_id, LOGGED_TABLES_TAG, json.dumps([entry, *(e for e in listed if e != entry)])
    )


@rank_zero_only
def log_student_model(logger: RunLogger, student_dir: Path) -> None:
    """The trained student as an MLflow model named `student` (transformers flavour, task
    text-generation: `mlflow.transformers.load_model(uri)` gives a generation pipeline). A LoRA
    adapter folder (`model.student.lora.save=adapter`) is not a standalone model: it is logged
    as the plain artifact folder `student/`."""
    import logging

    import mlflow
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student_dir = Path(student_dir)
    if (student_dir / "adapter_config.json").is_file():
        logger.experiment.log_artifacts(logger.run_id, str(student_dir), "student")
        return
    quiet = logging.getLogger("mlflow.transformers")
    level, quiet.level = quiet.level, logging.ERROR  # hub model card / licence lookups
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    mlflow.set_tracking_uri(logger._tracking_uri)
    try:
        model = AutoModelForCausalLM.from_pretrained(student_dir)
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        mlflow.start_run(run_id=logger.run_id)
        mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="student",
            task="text-generation",
            pip_requirements=[
                f"transformers=={transformers.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
            ],
        )
    finally:
        quiet.level = level
        if bars:
            transformers.utils.logging.enable_progress_bar()
        # leave the fluent run without ending it: the run's status is the experiment's to set
        mlflow.end_run(status="RUNNING")
