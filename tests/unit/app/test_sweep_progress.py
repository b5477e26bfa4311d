"""A sweep's terminal lines: each job's place in the sweep and the sweep's ETA (app.sweep)."""

from __future__ import annotations

from omegaconf import OmegaConf

from pad_lightning.app.sweep import job_lines, planned_jobs

BASIC = OmegaConf.create({"hydra": {"sweeper": {}}})


def test_planned_jobs_is_the_product_of_the_swept_values():
    assert planned_jobs(BASIC, ["n=2,4", "loss=ppd,vpd", "experiment=smoke"]) == 4
    assert planned_jobs(BASIC, ["seed=range(3)", "n=choice(2,4)"]) == 6
    assert planned_jobs(BASIC, ["experiment=smoke"]) == 1


def test_planned_jobs_of_a_search_is_its_trials_or_unknown():
    optuna = OmegaConf.create({"hydra": {"sweeper": {"n_trials": 20}}})
    assert planned_jobs(optuna, ["trainer.optim.lr=interval(1e-4,1e-2)"]) == 20
    assert planned_jobs(BASIC, ["trainer.optim.lr=interval(1e-4,1e-2)"]) is None


def test_job_lines_give_the_place_and_the_eta_at_the_pace_so_far():
    assert job_lines(0, ["n=2", "loss=ppd"], 0.0, 4) == "#0 : n=2 loss=ppd\n  job 1/4"
    # two jobs took 100 s: two more left at 50 s each
    assert job_lines(2, ["n=4"], 100.0, 4) == "#2 : n=4\n  job 3/4, sweep ETA 1m40s"
    assert job_lines(2, ["n=4"], 100.0, None) == "#2 : n=4"
