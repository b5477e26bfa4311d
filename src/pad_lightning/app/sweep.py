"""A `--multirun` as one MLflow parent run with its jobs as nested child runs.

Hydra calls `MlflowSweep` (conf/hydra/default.yaml, `hydra.callbacks`) in the launching process:

* at the start of a multirun it creates the parent run (named after the sweep's overrides,
  the swept ones first: `sweep: n=2,4 loss=ppd,vpd (experiment=smoke)`) and writes
  `<sweep dir>/mlflow_parent.json`; every job
  reads that file and creates its run with the tag `mlflow.parentRunId`, so the MLflow UI shows
  the jobs nested under the sweep (one click expands or collapses it). The file, not process
  state, carries the id, so launchers that run jobs in other processes or hosts work the same.
* each job's line (`#2 : loss=vpd n=2`) is printed when it starts;
* a job that fails prints its one-line error and the sweep goes on with the next job;
* at the end `python -m pad_lightning.compare <sweep dir>` runs: the table of swept settings
  against final metrics (the optimised metric first, when the jobs measured it), ranked best
  first, is printed and logged with its chart to the parent run (compare/); the best job by
  the optimised metric (`optimized_metric`, else test exact match) is named on the parent run
  (metrics `best/...`, params `best.<swept key>`, tags `sweep.best_*`, its description) and
  in a line, followed by the link to the sweep's jobs in MLflow's run list, best first;
  then the parent is FINISHED if every job finished, else FAILED, and the command exits with
  status 1 after a line naming the failed jobs. A sweep stopped by SIGTERM or Ctrl-C marks
  the parent KILLED.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_FILE = "mlflow_parent.json"
_failures: list[str] = []  # jobs of this process's sweep that failed (one line each)
_clock: dict = {}  # this process's sweep: its start time and number of jobs (for the ETA)


def parent_info(sweep_dir: str | Path) -> dict | None:
    """The parent run of the sweep in `sweep_dir` (run_id, tracking_uri, experiment_id), or None."""
    path = Path(sweep_dir) / PARENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_failure(job: int, overrides: list[str], message: str) -> None:
    """Note a failed job of the current sweep; its line goes to stderr now."""
    line = f"#{job} ({' '.join(overrides)}): {message}"
    _failures.append(line)
    print(f"job {line}", file=sys.stderr, flush=True)


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (`n=2,4`, `seed=range(3)`, `loss=choice(ppd,vpd)`), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def planned_jobs(config: DictConfig, overrides: list[str]) -> int | None:
    """How many jobs a sweep will run: the product of the swept overrides' value counts (the
    basic sweeper), or the sweeper's `n_trials` (Optuna); None when it cannot be told."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
    if trials:
        return int(trials)
    total = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            if not (override.is_discrete_sweep() or override.is_range_sweep()):
                return None
            total *= len(list(override.sweep_string_iterator()))
    return total


def job_lines(num: int, overrides: list[str], elapsed: float, total: int | None) -> str:
    """`#1 : loss=vpd n=2` and, when the sweep's size is known, `  job 2/4, sweep ETA 1m20s`: the
    job, its place in the sweep and the time left at the mean pace of the jobs so far (no ETA
    before the first job ends)."""
    from pad_lightning.training.progress import eta_text

    line = f"#{num} : {' '.join(overrides)}"
    if total is None:
        return line
    place = f"  job {num + 1}/{total}"
    if num > 0:
        place += f", sweep ETA {eta_text(elapsed / num * (total - num))}"
    return f"{line}\n{place}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def set_parent_status(sweep_dir: str | Path, status: str) -> None:
    """End the sweep's parent run (if it has one) as FINISHED, FAILED or KILLED."""
    info = parent_info(sweep_dir)
    if info is not None:
        _client(info["tracking_uri"]).set_terminated(info["run_id"], status)


@dataclass
class Target:
    """What a sweep's jobs are ranked by: the optimised metric as the config names it (`name`,
    e.g. val/exact_match), as the comparison table names it (`spec`, val.exact_match), the MLflow
    metric the run list orders by (`mlflow_key`), and whether larger is better."""

    name: str
    spec: str
    mlflow_key: str
    maximize: bool


def optimization_target(config: DictConfig) -> Target:
    """The sweep's optimised metric (`app.configs.optimized_metric`; test exact match, i.e.
    after/exact_match, when none is set) and its direction: the sweeper's `direction` if it has
    one (Optuna), else larger is better except for losses."""
    from pad_lightning.app.configs import optimized_metric
    from pad_lightning.reporting.compare import higher_is_better, objective_spec, parse_metric

    name = optimized_metric(config) or "after/exact_match"
    spec = objective_spec(name)
    side, metric = parse_metric(spec)
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if direction is not None and not isinstance(direction, str):  # multi-objective: the first
        direction = next(iter(direction), None)
    maximize = higher_is_better(spec) if direction is None else "min" not in str(direction).lower()
    # val/<m> is the run's last val/<m>, after/<m> its last test/<m>; a delta has no metric of
    # its own in MLflow: its run list is ordered by the test metric
    key = f"val/{metric}" if side == "val" else f"test/{metric}"
    return Target(name, spec, key, maximize)


def _compare_args(sweep_dir: Path, target: Target) -> list[str]:
    """`--metrics` putting the optimised metric first (the table is ranked by it), when some
    job measured it; none (the defaults) otherwise."""
    from pad_lightning.reporting.compare import (
        DEFAULT_METRICS,
        CompareError,
        known_metrics,
        load_sweep_dir,
    )

    try:
        known = known_metrics(load_sweep_dir(sweep_dir).jobs)
    except CompareError:
        return []
    if target.spec not in known or target.spec == DEFAULT_METRICS[0]:
        return []
    rest = [m for m in DEFAULT_METRICS if m in known and m != target.spec]
    return ["--metrics", ",".join([target.spec, *rest])]


def announce_best(sweep_dir: Path, info: dict, target: Target) -> None:
    """Name the best finished job on the parent run and in the terminal, and print the link to
    the sweep's jobs in MLflow's run list ordered by the optimised metric (best first)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    from pad_lightning.reporting.compare import best_job, load_sweep_dir, swept_keys
    from pad_lightning.reporting.figures import REPORTED_METRICS
    from pad_lightning.tracking.mlflow_run import run_list_url, save_run_list_view

    parent, exp_id = info["run_id"], info["experiment_id"]
    client = _client(info["tracking_uri"])
    jobs = load_sweep_dir(sweep_dir).jobs
    winners = best_job(jobs, target.spec, target.maximize)
    unmeasured = ""
    if not winners and target.spec != "exact_match":  # e.g. no validation ran: test exact match
        unmeasured = f" ({target.name} was not measured)"
        target = Target("after/exact_match", "exact_match", "test/exact_match", True)
        winners = best_job(jobs, target.spec, target.maximize)
    if winners:
        best = winners[0]
        value = best.value(target.spec)
        run_name = client.get_run(best.run_id).info.run_name if best.run_id else best.name
        keys = dict.fromkeys([*info.get("swept", []), *swept_keys(jobs)])
        params = {f"best.{k}": best.overrides[k] for k in keys if k in best.overrides}
        label = " ".join(f"{k[len('best.') :]}={v}" for k, v in params.items()) or best.label()
        metrics = {f"best/{target.name}": value}
        headline = REPORTED_METRICS[:4]
        metrics.update({f"best/test/{m}": best.after[m] for m in headline if m in best.after})
        tags = {"sweep.best_job": best.name, "sweep.best_run_name": run_name or ""}
        if best.run_id:
            tags["sweep.best_run_id"] = best.run_id
        tied = [j.name for j in winners[1:]]
        tie = f" (tied with job {', '.join(tied)}; the first is named)" if tied else ""
        note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
        link = f"[{run_name}](#/experiments/{exp_id}/runs/{best.run_id})" if best.run_id else ""
        tags["mlflow.note.content"] = (
            f"{note}\n\n**Best** by {target.name} = {value:.4g}: job {best.name} "
            f"(`{label}`) {link}{tie}"
        )
        now = int(time.time() * 1000)
        client.log_batch(
            parent,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        print(
            f"best: {target.name} = {value:.4g}: job {best.name} ({label}), run {run_name}"
            f"{tie}{unmeasured}",
            flush=True,
        )
    else:
        print(f"best: no finished job measured {target.name}{unmeasured}", flush=True)
    # the jobs with the optimised metric and the headline test metrics as columns, best first
    children = f"tags.`mlflow.parentRunId` = '{parent}'"
    logged = {k for r in client.search_runs([exp_id], children) for k in r.data.metrics}
    columns = [f"test/{m}" for m in REPORTED_METRICS[:4] if f"test/{m}" in logged]
    try:
        url = save_run_list_view(
            client, exp_id, parent, children, target.mlflow_key, not target.maximize, columns
        )
    except MlflowException:  # the view could not be saved: the list, ordered, without columns
        url = run_list_url(exp_id, children, target.mlflow_key, not target.maximize)
    print(f"the sweep's runs, best {target.mlflow_key} first: {url}", flush=True)


class MlflowSweep(Callback):
    """Hydra callback: the MLflow parent run of a multirun (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from pad_lightning.tracking.mlflow_run import (
            absolute_tracking_uri,
            experiment_id,
            naming_overrides,
            open_store,
            override_key,
            run_tags,
        )

        _failures.clear()
        _clock.update(started=time.monotonic(), total=None)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = absolute_tracking_uri(str(config.logger.tracking_uri))
        overrides = list(config.hydra.overrides.task)
        open_store(uri, config.logger.experiment_name)  # a new database: created under its lock
        client = _client(uri)
        exp_id = experiment_id(client, config.logger.experiment_name)
        tags = run_tags(overrides)
        tags.update(
            {
                "sweep.dir": str(sweep_dir),
                "sweep.parent": "true",
                "mlflow.note.content": "Sweep `"
                + " ".join(overrides)
                + f"`; its jobs are the nested runs. Directory: {sweep_dir}",
            }
        )
        swept = swept_keys(overrides)
        _clock["total"] = planned_jobs(config, overrides)
        named = naming_overrides(overrides)
        varying = [o for o in named if override_key(o) in swept]
        shared = [o for o in named if override_key(o) not in swept]
        # a sweeper with its own search space (Optuna: hydra.sweeper.params) sweeps those keys
        space = OmegaConf.select(config, "hydra.sweeper.params") or {}
        if space and "_target_" in config.hydra.sweeper:
            sweeper = str(config.hydra.sweeper._target_).rsplit(".", 1)[-1].replace("Sweeper", "")
            swept = swept + [str(k) for k in space if str(k) not in swept]
            varying.append(f"{sweeper.lower()}({', '.join(str(k) for k in space)})")
        name = "sweep: " + " ".join(varying) + (f" ({' '.join(shared)})" if shared else "")
        run = client.create_run(exp_id, run_name=name[:250], tags=tags)
        info = {
            "run_id": run.info.run_id,
            "tracking_uri": uri,
            "experiment_id": exp_id,
            "swept": swept,
        }
        (sweep_dir / PARENT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        store = f"--backend-store-uri {uri} " if uri.startswith(("sqlite:///", "file:")) else ""
        print(
            f"sweep {sweep_dir}: MLflow parent run {run.info.run_id} ({name})\n"
            f"open it: mlflow ui {store}-> http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
            "?workflowType=machine_learning",
            flush=True,
        )

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
            elapsed = time.monotonic() - _clock.get("started", time.monotonic())
            num, overrides = hydra_cfg.job.num, list(hydra_cfg.overrides.task)
            print(job_lines(num, overrides, elapsed, _clock.get("total")), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        info = parent_info(sweep_dir)
        failed = list(_failures)
        if info is not None:  # jobs in other processes: their MLflow runs tell
            client = _client(info["tracking_uri"])
            children = client.search_runs(
                [info["experiment_id"]],
                filter_string=f"tags.mlflow.parentRunId = '{info['run_id']}'",
            )
            for child in children:
                if child.info.status != "FINISHED" and not any(
                    f"#{child.data.tags.get('sweep.job')} " in line for line in failed
                ):
                    failed.append(f"#{child.data.tags.get('sweep.job')}: {child.info.status}")
        # the sweep's table (mean +- std over seeds) and chart, logged to the parent run
        from pad_lightning.reporting.compare import main as compare

        target = optimization_target(config)
        try:
            compare([str(sweep_dir), *_compare_args(sweep_dir, target)])
        except Exception as err:  # noqa: BLE001 - the jobs' results stand without the table
            print(f"compare: {err}", file=sys.stderr)
        results = sweep_dir / "optimization_results.yaml"  # Optuna's best parameters
        if info is not None and results.is_file():
            _client(info["tracking_uri"]).log_artifact(info["run_id"], str(results))
        if info is not None:
            try:
                announce_best(sweep_dir, info, target)
            except Exception as err:  # noqa: BLE001 - the jobs' results stand without it
                print(f"sweep: could not name the best job: {err}", file=sys.stderr)
        if info is not None:
            set_parent_status(sweep_dir, "FAILED" if failed else "FINISHED")
        if failed:
            sys.exit(f"sweep {sweep_dir}: {len(failed)} job(s) failed: " + "; ".join(failed))
