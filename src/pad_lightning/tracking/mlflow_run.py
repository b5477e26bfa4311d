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
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

LOCAL_SCHEMES = ("sqlite:///", "file://")
COMMIT_TAG = "pad_lightning.committed_step"
# MLflow 3's UI opens an experiment with this kind in its model-training view (not GenAI)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client, name: str) -> str:
    """The id of the experiment `name`, created if missing, tagged for the model-training view."""
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
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


def run_tags(overrides: list[str], sweep: dict | None = None) -> dict[str, str]:
    """Tags of a new run: one `override.<key>` per override, the run description (its command
    line), the sweep it belongs to (`sweep.dir`, `sweep.job`, and `mlflow.parentRunId`, which
    nests the run under the sweep's parent run in the UI), and the git commit and dirty flag."""
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
        super().__init__(*args, **kwargs)
        self.hold_metrics = False
        self._held: list[tuple[dict, int | None, int]] = []  # (metrics, step, time in ms)
        self._monitor = None

    @property
    def experiment(self):
        if rank_zero_only.rank == 0 and not getattr(self, "_kind_set", False):
            from mlflow import MlflowClient

            self._kind_set = True  # created here (tagged) before Lightning looks it up
            experiment_id(MlflowClient(self._tracking_uri), self._experiment_name)
        return super().experiment

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
        else:
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
        "model.teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }


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
