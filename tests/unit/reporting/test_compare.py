"""pad_lightning.compare on a fake loss x n x seed sweep: as a sweep dir and as an MLflow parent run."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pad_lightning.reporting import compare
from pad_lightning.reporting.compare import Cell, Job, load_parent_run, load_sweep_dir, table

# after/exact_match per (loss, n) and seed; before is 0.4 for every job (the same zoo)
AFTER_EM = {
    ("ppd", "2"): [0.50, 0.60, 0.70],
    ("ppd", "4"): [0.80, 0.84, 0.86],
    ("vpd", "2"): [0.40, 0.44, 0.42],
    ("vpd", "4"): [0.60, 0.64, None],  # seed 2 failed
}
BEFORE = {"exact_match": 0.4, "quality": 0.8, "teacher_reward": -1.5, "kendall_tau": 0.6}


def jobs_spec():
    """(job number, overrides, after metrics or None for a failed job)."""
    out = []
    num = 0
    for loss in ("ppd", "vpd"):
        for n in ("2", "4"):
            for seed, em in enumerate(AFTER_EM[(loss, n)]):
                after = None
                if em is not None:
                    after = {
                        "exact_match": em,
                        "quality": 0.9 + 0.01 * seed,
                        "teacher_reward": -0.5 - 0.1 * seed,
                        "kendall_tau": 0.9,
                    }
                out.append(
                    (num, [f"loss={loss}", f"n={n}", f"seed={seed}", "trainer.epochs=3"], after)
                )
                num += 1
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite MLflow store with a parent run and its 12 children, and the same sweep as a dir."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=str(root / "artifacts"))
    other = client.create_experiment("other", artifact_location=str(root / "artifacts-other"))
    parent = client.create_run(exp, run_name="sweep-parent").info.run_id
    sweep_dir = root / "multirun" / "12-00-00"
    for num, overrides, after in jobs_spec():
        tags = {
            "mlflow.parentRunId": parent,
            "sweep.dir": str(sweep_dir),
            "sweep.job": str(num),
            **{f"override.{o.split('=')[0]}": o.split("=")[1] for o in overrides},
        }
        # one child in a second experiment: the search must look across experiments
        run = client.create_run(other if num == 1 else exp, tags=tags).info.run_id
        for m, v in BEFORE.items():
            client.log_metric(run, f"test/{m}", v, step=0)
        if after is not None:
            for m, v in after.items():
                client.log_metric(run, f"test/{m}", v, step=30)
        client.set_terminated(run, "FINISHED" if after is not None else "FAILED")

        job_dir = sweep_dir / str(num)
        job_dir.mkdir(parents=True)
        state = {"overrides": overrides, "mlflow_run_id": run}
        state["status"] = "FINISHED" if after is not None else "FAILED"
        (job_dir / "run_state.json").write_text(json.dumps(state))
        if after is not None:
            summary = {
                "before": BEFORE,
                "after": after,
                "delta": {m: after[m] - BEFORE[m] for m in after},
                "timings": {"fit_s": 1.0},
                "overrides": overrides,
                "mlflow_run_id": run,
                "tracking_uri": uri,
                "run_dir": str(job_dir),
                "resumed": False,
            }
            (job_dir / "summary.json").write_text(json.dumps(summary))
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")
    (sweep_dir / "mlflow_parent.json").write_text(
        json.dumps({"run_id": parent, "tracking_uri": uri, "experiment_id": exp})
    )
    return {"client": client, "uri": uri, "parent": parent, "sweep_dir": sweep_dir, "root": root}


def expected_rows():
    rows = {}
    for key, values in AFTER_EM.items():
        vals = [v for v in values if v is not None]
        rows[key] = (statistics.fmean(vals), statistics.stdev(vals), len(vals))
    return rows


def check_table(comparison):
    assert comparison.swept == ["loss", "n", "seed"]  # trainer.epochs is the same everywhere
    assert comparison.group_keys == ["loss", "n"]
    assert comparison.over == ["seed"]
    # ranked by the first metric (exact_match), best first
    assert [tuple(r.group.values()) for r in comparison.rows] == [
        ("ppd", "4"),
        ("vpd", "4"),
        ("ppd", "2"),
        ("vpd", "2"),
    ]
    by_group = {tuple(r.group.values()): r for r in comparison.rows}
    # the best of each column: exact_match and its delta ppd/4; quality 0.91 (three rows tie);
    # teacher_reward -0.55 (vpd/4, no seed 2); kendall_tau 0.9 everywhere: nothing marked
    assert by_group[("ppd", "4")].best == ["exact_match", "quality", "delta.exact_match"]
    assert by_group[("ppd", "2")].best == by_group[("vpd", "2")].best == ["quality"]
    assert by_group[("vpd", "4")].best == ["teacher_reward"]
    # by hand: ppd/2 -> 0.6 +- 0.1; ppd/4 -> 0.8333 +- 0.0306; vpd/2 -> 0.42 +- 0.02; vpd/4 -> 0.62 +- 0.0283
    hand = {
        ("ppd", "2"): (0.6, 0.1),
        ("ppd", "4"): (0.8333333, 0.0305505),
        ("vpd", "2"): (0.42, 0.02),
        ("vpd", "4"): (0.62, 0.0282843),
    }
    for key, (mean, std, n) in expected_rows().items():
        cell = by_group[key].cells["exact_match"]
        assert cell.n == n
        assert cell.mean == pytest.approx(hand[key][0], abs=1e-6)
        assert cell.mean == pytest.approx(mean)
        assert cell.std == pytest.approx(hand[key][1], abs=1e-6)
        assert cell.std == pytest.approx(std)
        delta = by_group[key].cells["delta.exact_match"]
        assert delta.mean == pytest.approx(mean - 0.4)
        assert delta.std == pytest.approx(std)
    assert by_group[("ppd", "2")].replicates == {"seed": ["0", "1", "2"]}
    assert by_group[("vpd", "4")].replicates == {"seed": ["0", "1"]}
    # quality after = 0.9 + 0.01 * seed
    assert by_group[("ppd", "2")].cells["quality"].mean == pytest.approx(0.91)
    assert by_group[("vpd", "4")].cells["quality"].mean == pytest.approx(0.905)
    assert [(j.overrides["seed"], j.status) for j in comparison.unfinished] == [("2", "FAILED")]
    assert comparison.unfinished[0].overrides["loss"] == "vpd"


def test_sweep_dir_groups_seeds(store):
    sweep = load_sweep_dir(store["sweep_dir"])
    assert len(sweep.jobs) == 12
    assert sweep.parent_run_id == store["parent"]
    assert sweep.tracking_uri == store["uri"]
    assert [j.name for j in sweep.jobs][:3] == ["0", "1", "2"]
    comparison = table(sweep.jobs)
    check_table(comparison)
    assert comparison.metrics == list(compare.DEFAULT_METRICS)


def test_parent_run_matches_sweep_dir(store):
    sweep = load_parent_run(store["client"], store["parent"])
    assert len(sweep.jobs) == 12  # including the child in the other experiment
    failed = [j for j in sweep.jobs if not j.finished]
    assert len(failed) == 1 and failed[0].status == "FAILED"
    assert failed[0].before["exact_match"] == pytest.approx(0.4)
    check_table(table(sweep.jobs))


def test_metrics_absent_are_dropped_and_single_runs_have_no_std():
    jobs = [
        Job(
            "0",
            {"loss": "ppd", "seed": "0"},
            "FINISHED",
            {"exact_match": 0.1},
            {"exact_match": 0.5},
        ),
        Job(
            "1",
            {"loss": "vpd", "seed": "0"},
            "FINISHED",
            {"exact_match": 0.1},
            {"exact_match": 0.3},
        ),
        Job("2", {"loss": "vpd", "seed": "1"}, "KILLED"),
    ]
    comparison = table(jobs)
    assert comparison.swept == ["loss", "seed"] and comparison.group_keys == ["loss"]
    assert comparison.metrics == ["exact_match", "delta.exact_match"]  # no quality, ... logged
    ppd = comparison.rows[0].cells["exact_match"]
    assert (ppd.mean, ppd.std, ppd.n) == (0.5, None, 1)
    assert compare.format_cell(ppd, 1) == "0.500"  # one run: its value, no "± -"
    assert compare.format_cell(Cell([0.5]), 2) == "0.500 (1/2)"
    assert compare.format_cell(Cell([0.5, 0.7]), 3) == "0.600 ± 0.141 (2/3)"
    # --over changes the replicate axis: grouping by seed, replicates over loss
    by_seed = table(jobs, over=("loss",))
    assert by_seed.group_keys == ["seed"]
    assert by_seed.rows[0].cells["exact_match"].mean == pytest.approx(0.4)
    assert by_seed.rows[0].cells["exact_match"].std == pytest.approx(0.1414213)


def test_overrides_parsing_and_missing_keys():
    assert compare.parse_overrides(["+a=1", "b=x=y", "~c", "++d=2"]) == {
        "a": "1",
        "b": "x=y",
        "c": "(deleted)",
        "d": "2",
    }
    jobs = [
        Job("0", {"seed": "0"}, "FINISHED", after={"exact_match": 0.5}),
        Job(
            "1",
            {"seed": "0", "model.teacher.zoo": "student"},
            "FINISHED",
            after={"exact_match": 0.3},
        ),
    ]
    comparison = table(jobs)
    assert comparison.swept == ["model.teacher.zoo"]  # set in one job only: differs
    assert [r.group["model.teacher.zoo"] for r in comparison.rows] == [compare.MISSING, "student"]


def test_cli_sweep_dir_prints_writes_and_logs(store, capsys):
    out = store["root"] / "cli" / "cmp.png"
    assert compare.main([str(store["sweep_dir"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the whole table on one line per row, no wrapping or "…" (stdout is not a terminal here)
    assert "…" not in printed
    line = next(x for x in printed.splitlines() if "ppd" in x and " 2 " in x)
    assert "0.600 ± 0.100" in line and "0,1,2" in line
    assert "0.620 ± 0.028 " in printed
    # ranked by exact_match; the best of each column carries the mark, and a line says so
    table_rows = [x for x in printed.splitlines() if x.startswith("│ ")]
    assert [r.split("│")[1:3] for r in table_rows][0] == [" ppd  ", " 4 "]
    assert "* 0.833 ± 0.031 │" in table_rows[0] and "* +0.433 ± 0.031 │" in table_rows[0]
    assert "│   0.620 ± 0.028 │" in table_rows[1] and "* -0.550 ± 0.071 │" in table_rows[1]
    assert "".join(table_rows).count("* ") == 6  # exact_match, delta, teacher_reward, quality x3
    assert "rows ranked by exact_match (highest first); * = best in its column" in printed
    assert "not finished: job 11 (loss=vpd n=4 seed=2 trainer.epochs=3): FAILED" in printed

    image = Image.open(out)
    image.verify()
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["loss"], r["n"], r["runs"], r["seed"]) for r in rows][1] == ("vpd", "4", "2", "0,1")
    assert float(rows[0]["exact_match_mean"]) == pytest.approx(0.8333333)
    assert [r["best"] for r in rows] == [
        "exact_match quality delta.exact_match",
        "teacher_reward",
        "quality",
        "quality",
    ]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["unfinished"][0]["status"] == "FAILED"
    assert data["ranked_by"] == "exact_match"
    assert data["rows"][0]["best"] == ["exact_match", "quality", "delta.exact_match"]

    client = store["client"]
    logged = {a.path for a in client.list_artifacts(store["parent"], "compare")}
    assert logged >= {"compare/cmp.png", "compare/cmp.csv", "compare/cmp.json"}
    downloaded = Path(
        client.download_artifacts(store["parent"], "compare/cmp.png", str(store["root"] / "dl"))
    )
    assert downloaded.read_bytes() == out.read_bytes()


def test_cli_parent_run_id(store, capsys, monkeypatch):
    monkeypatch.chdir(store["root"])
    code = compare.main(
        [
            store["parent"],
            "--tracking-uri",
            store["uri"],
            "--metrics",
            "exact_match,before.kendall_tau",
            "--files-only",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "before kendall_tau" in printed and "0.600 ± 0.000" in printed
    png = store["root"] / f"compare-{store['parent']}.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2(store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # not a path, and no store in the cwd (none is created either)
    assert compare.main(["no/such/dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare: no/such/dir: no such directory") and "\n" not in err
    assert not (tmp_path / "mlflow.db").exists()
    # a run id the store does not know
    assert compare.main(["0123456789abcdef0123456789abcdef", "--tracking-uri", store["uri"]]) == 2
    assert "neither a sweep directory nor a run id" in capsys.readouterr().err
    # a directory that is not a sweep
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    # a sweep whose jobs all failed
    for num in (0, 1):
        job = tmp_path / "failed" / str(num)
        job.mkdir(parents=True)
        (job / "run_state.json").write_text(
            json.dumps({"status": "FAILED", "overrides": [f"seed={num}"]})
        )
    assert compare.main([str(tmp_path / "failed")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"compare: {tmp_path / 'failed'}: no finished job (2 jobs: FAILED x2)"


def test_cli_piped_output_is_not_truncated(store):
    """As `python -m pad_lightning.compare <dir> | cat`: stdout a pipe, COLUMNS narrow."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.compare",
            str(store["sweep_dir"]),
            "--no-log",
        ],
        capture_output=True,
        text=True,
        env={"COLUMNS": "40", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    header = next(x for x in proc.stdout.splitlines() if "exact_match" in x)
    assert "delta exact_match" in header and "…" not in proc.stdout
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_cli_no_log_writes_and_logs_nothing(store, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    client, parent = store["client"], store["parent"]
    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    files = _files(store["root"])
    # from the sweep dir (default out: <sweep dir>/compare.png) and from the parent run id
    assert compare.main([str(store["sweep_dir"]), "--no-log"]) == 0
    assert compare.main([parent, "--tracking-uri", store["uri"], "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("* 0.833 ± 0.031") == 2 and "wrote" not in printed
    assert _files(store["root"]) - files == set()  # (the store's own files may change)
    assert not list(tmp_path.iterdir())
    assert {a.path for a in client.list_artifacts(parent, "compare")} == logged
    # --out names a file to write: not with --no-log (argparse: exit 2)
    with pytest.raises(SystemExit) as stop:
        compare.main([str(store["sweep_dir"]), "--no-log", "--out", str(tmp_path / "x.png")])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_unknown_metric_is_one_line(store, capsys):
    code = compare.main(
        [str(store["sweep_dir"]), "--no-log", "--metrics", "exact_match,exact_mach"]
    )
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and captured.out == ""
    assert err.startswith(
        "compare: --metrics exact_mach: unknown; valid: exact_match, kendall_tau, "
    )
    assert "before.exact_match" in err and "delta.quality" in err
    # the same name with a side is known, and so is val.<m> where jobs have it
    assert compare.main([str(store["sweep_dir"]), "--no-log", "--metrics", "after.quality"]) == 0
    code = compare.main([str(store["sweep_dir"]), "--no-log", "--metrics", "val.exact_match"])
    assert code == 2  # this sweep's summaries have no validation


def test_single_seed_rows_print_a_plain_value(tmp_path, capsys):
    for num, (loss, em) in enumerate((("ppd", 0.25), ("vpd", 0.5))):
        job = tmp_path / str(num)
        job.mkdir()
        summary = {
            "before": {"exact_match": 0.0},
            "after": {"exact_match": em},
            "val": {"exact_match": em / 2},
            "overrides": [f"loss={loss}", "seed=0"],
        }
        (job / "summary.json").write_text(json.dumps(summary))
    assert (
        compare.main([str(tmp_path), "--no-log", "--metrics", "exact_match,val.exact_match"]) == 0
    )
    rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows] == ["vpd", "ppd"]  # ranked, best first
    assert "±" not in "".join(rows)
    assert rows[0].split("│")[-3:-1] == ["     * 0.500 ", "         * 0.250 "]
    assert rows[1].split("│")[-3:-1] == ["       0.250 ", "           0.125 "]


def test_best_job_and_objective_names():
    jobs = [
        Job("0", {"n": "2"}, "FINISHED", after={"loss": 0.3, "exact_match": 0.5}, val={"x": 1.0}),
        Job("1", {"n": "4"}, "FINISHED", after={"loss": 0.2, "exact_match": 0.5}, val={"x": 3.0}),
        Job("2", {"n": "8"}, "FAILED", val={"x": 9.0}),  # unfinished: never the best
    ]
    assert [j.name for j in compare.best_job(jobs, "exact_match")] == ["0", "1"]  # a tie
    assert [j.name for j in compare.best_job(jobs, "loss")] == ["1"]  # lower is better
    assert [j.name for j in compare.best_job(jobs, "val.x")] == ["1"]
    assert [j.name for j in compare.best_job(jobs, "val.x", maximize=False)] == ["0"]
    assert compare.best_job(jobs, "quality") == []
    assert compare.objective_spec("val/exact_match") == "val.exact_match"
    assert compare.objective_spec("after/quality") == "quality"
    assert compare.objective_spec("delta/quality") == "delta.quality"
