"""What a run and a sweep show in MLflow: the per-epoch time figure apart from the run's totals,
the headline metric logged before MLflow's system metrics, a colour per sweep job, and the
sweep's best job named on its parent run with a link to its jobs, best first."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from pad_lightning.app import experiment
from pad_lightning.app.sweep import announce_best, optimization_target
from pad_lightning.reporting.figures import epoch_time, history_from_mlflow
from pad_lightning.tracking.mlflow_run import (
    JOB_COLORS,
    RUN_COLOR_TAG,
    RunLogger,
    run_list_url,
    run_tags,
)


def _logger(tmp_path, **kwargs) -> RunLogger:
    return RunLogger(
        experiment_name="pad-lightning",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        run_name="r",
        **kwargs,
    )


def _bars(fig) -> dict[int, float]:
    """Stacked bar heights of the figure, summed per x position (one bar per epoch)."""
    (ax,) = fig.axes
    heights: dict[int, float] = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2)
        heights[x] = heights.get(x, 0.0) + patch.get_height()
    return heights


def test_epoch_time_plot_draws_the_epochs_not_the_run_totals(tmp_path):
    """3 epochs of 3, 4 and 5 s in a run whose fit took 249 s: 3 bars (not 4), titled so."""
    logger = _logger(tmp_path)
    for epoch, step in enumerate((0, 2, 4)):
        per_epoch = {"system/time/generation_s": 1.0 + epoch, "system/time/training_s": 2.0}
        logger.log_metrics({**per_epoch, "system/memory/peak_rss_mb": 100.0 + epoch}, step=step)
    timings = {"fit_s": 249.0, "total_s": 400.0, "memory/peak_rss_mb": 102.0}
    experiment._log_scale(
        logger, SimpleNamespace(global_step=6, local_params=None), {"timings": timings}
    )

    history = history_from_mlflow(logger.experiment, logger.run_id)
    fig = epoch_time(history)
    heights = _bars(fig)
    assert sorted(heights) == [0, 1, 2]
    assert [heights[x] for x in (0, 1, 2)] == pytest.approx([3.0, 4.0, 5.0])
    assert fig.axes[0].get_title() == "Time per epoch by phase (3 epochs, 12.0 s in all)"
    # the totals are there, under their own prefix; the per-epoch series are left alone
    metrics = logger.experiment.get_run(logger.run_id).data.metrics
    assert metrics["system/run/fit_s"] == 249.0 and metrics["system/run/total_s"] == 400.0
    assert metrics["system/run/peak_rss_mb"] == 102.0
    assert [s for s, _ in history["system/memory/peak_rss_mb"]] == [0, 2, 4]


def test_system_metrics_start_after_the_test_before_training(monkeypatch, tmp_path):
    """MLflow's compare view colours by a run's first metric: the test comes first, then the
    judge check's numbers (measured before the run existed), then the system metrics."""
    calls = []
    logger = SimpleNamespace(
        start_system_metrics=lambda resume: calls.append("system metrics"),
        log_metrics=lambda metrics, step: calls.append(f"{min(metrics)} at {step}"),
    )
    cfg = OmegaConf.create({"trainer": {"val_every_n_epochs": 0}})
    judge = SimpleNamespace(metrics=lambda: {"judge/agreement": 0.8, "judge/at_chance": 0.0})
    run = SimpleNamespace(
        dir=tmp_path,
        resuming=False,
        is_zero=True,
        logger=logger,
        module=None,
        datamodule=None,
        cfg=cfg,
        judge=judge,
    )

    def test(trainer, module, datamodule):
        calls.append("test/exact_match")
        return {"exact_match": 0.5}

    monkeypatch.setattr(experiment, "_test", test)
    assert experiment.evaluate_before(run, trainer=None) == {"exact_match": 0.5}
    assert calls == ["test/exact_match", "judge/agreement at 0", "system metrics"]


def test_each_job_of_a_sweep_has_its_own_colour():
    colors = [
        run_tags(["loss=ppd"], {"dir": "/s", "job": job, "parent_run_id": "p"})[RUN_COLOR_TAG]
        for job in range(len(JOB_COLORS))
    ]
    assert len(set(colors)) == len(JOB_COLORS) and all(c.startswith("#") for c in colors)
    assert RUN_COLOR_TAG not in run_tags(["loss=ppd"])  # a single run: MLflow's own colour


@pytest.mark.parametrize("key", ["objective", "optimized_metric"])
def test_optimization_target_reads_the_key_either_way(key):
    target = optimization_target(OmegaConf.create({key: "val/exact_match"}))
    assert (target.name, target.spec, target.mlflow_key, target.maximize) == (
        "val/exact_match",
        "val.exact_match",
        "val/exact_match",
        True,
    )
    loss = optimization_target(OmegaConf.create({key: "after/loss"}))
    assert (loss.mlflow_key, loss.maximize) == ("test/loss", False)
    optuna = {key: "val/loss", "hydra": {"sweeper": {"direction": "maximize"}}}
    assert optimization_target(OmegaConf.create(optuna)).maximize is True
    unset = optimization_target(OmegaConf.create({key: None}))
    assert (unset.name, unset.mlflow_key, unset.maximize) == (
        "after/exact_match",
        "test/exact_match",
        True,
    )


def _sweep_store(tmp_path, validated: bool = True):
    """A finished 4-job sweep (val exact match 0.25, 0.5, 0.75, 0.5; test half of it) in a
    sqlite store and a sweep dir: (client, experiment id, parent run, job -> run id, dir, info)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("pad-lightning", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(
        exp, run_name="sweep: seed=0,1 loss=ppd,vpd", tags={"mlflow.note.content": "Sweep"}
    )
    sweep_dir = tmp_path / "sweep"
    val = {("ppd", "0"): 0.25, ("ppd", "1"): 0.5, ("vpd", "0"): 0.75, ("vpd", "1"): 0.5}
    runs = {}
    for job, ((loss, seed), em) in enumerate(val.items()):
        overrides = ["experiment=smoke", f"seed={seed}", f"loss={loss}"]
        run = client.create_run(
            exp,
            run_name=f"seed={seed},loss={loss}",
            tags={"mlflow.parentRunId": parent.info.run_id},
        )
        runs[job] = run.info.run_id
        client.log_metric(run.info.run_id, "val/exact_match", em, step=6)
        client.log_metric(run.info.run_id, "test/exact_match", em / 2, step=6)
        (sweep_dir / str(job)).mkdir(parents=True)
        summary = {
            "before": {"exact_match": 0.0},
            "after": {"exact_match": em / 2, "quality": 0.5},
            "val": {"exact_match": em} if validated else {},
            "overrides": overrides,
            "mlflow_run_id": run.info.run_id,
        }
        (sweep_dir / str(job) / "summary.json").write_text(json.dumps(summary))
    info = {
        "run_id": parent.info.run_id,
        "tracking_uri": uri,
        "experiment_id": exp,
        "swept": ["seed", "loss"],
    }
    return client, exp, parent, runs, sweep_dir, info


def test_the_sweep_names_its_best_job_and_links_its_runs_best_first(tmp_path, capsys):
    client, exp, parent, runs, sweep_dir, info = _sweep_store(tmp_path)
    target = optimization_target(OmegaConf.create({"objective": "val/exact_match"}))
    announce_best(sweep_dir, info, target)

    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0] == "best: val/exact_match = 0.75: job 2 (seed=0 loss=vpd), run seed=0,loss=vpd"
    )
    assert printed[1].startswith(
        "the sweep's runs, best val/exact_match first: http://127.0.0.1:5000/#/experiments/"
    )
    # the link opens the sweep's jobs, best first, with the metrics as columns: a view saved
    # as the UI's Share button saves one (the address alone cannot choose columns)
    url = urlsplit(printed[1].split(": ", 1)[1])
    assert url.fragment == (
        f"/experiments/{exp}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={parent.info.run_id}"
    )
    view = json.loads(
        client.get_experiment(exp).tags[f"mlflow.sharedViewState.{parent.info.run_id}"]
    )
    columns = ["metrics.`val/exact_match`", "metrics.`test/exact_match`"]  # those logged
    assert view == {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        "orderByKey": "metrics.`val/exact_match`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {c: 140 for c in columns},
    }
    # the filter finds the jobs, and the order puts the best first
    found = client.search_runs(
        [exp], view["searchFilter"], order_by=["metrics.`val/exact_match` DESC"]
    )
    assert found[0].info.run_id == runs[2] and len(found) == 4
    got = client.get_run(parent.info.run_id).data
    assert got.metrics == {
        "best/val/exact_match": 0.75,
        "best/test/exact_match": 0.375,
        "best/test/quality": 0.5,
    }
    assert got.params == {"best.seed": "0", "best.loss": "vpd"}
    assert got.tags["sweep.best_run_id"] == runs[2]
    assert (
        got.tags["sweep.best_run_name"] == "seed=0,loss=vpd" and got.tags["sweep.best_job"] == "2"
    )
    assert got.tags["mlflow.note.content"].startswith(
        "Sweep\n\n**Best** by val/exact_match = 0.75: job 2"
    )
    assert f"(#/experiments/{exp}/runs/{runs[2]})" in got.tags["mlflow.note.content"]


def test_the_best_job_is_by_test_exact_match_when_the_optimised_metric_was_not_measured(
    tmp_path, capsys
):
    client, exp, parent, runs, sweep_dir, info = _sweep_store(tmp_path, validated=False)
    announce_best(
        sweep_dir, info, optimization_target(OmegaConf.create({"objective": "val/exact_match"}))
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "best: after/exact_match = 0.375: job 2 (seed=0 loss=vpd), run seed=0,loss=vpd "
        "(val/exact_match was not measured)"
    )
    assert printed[1].startswith("the sweep's runs, best test/exact_match first: ")
    got = client.get_run(parent.info.run_id).data
    assert got.tags["sweep.best_run_id"] == runs[2] and "best/after/exact_match" in got.metrics


def test_run_list_address_filters_and_orders():
    url = run_list_url("3", "tags.`sweep.dir` = '/s'", "val/exact_match", ascending=True)
    assert url == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60sweep.dir%60%20%3D%20%27%2Fs%27"
        "&orderByKey=metrics.%60val%2Fexact_match%60&orderByAsc=true"
    )
