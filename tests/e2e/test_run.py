"""End-to-end runs of `python -m pad_lightning.run` with the micro zoo (experiment=smoke)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import subprocess_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _cmd(tmp: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "experiment=smoke",
        f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
        *overrides,
    ]


def run(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(tmp, *overrides),
        cwd=tmp,
        env=subprocess_env(tmp),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _client(tmp: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run(tmp, f"hydra.run.dir={tmp}/run")
    return tmp, proc


def test_default_run_writes_summary_and_prints_its_path_last(smoke_run):
    tmp, proc = smoke_run
    last_line = proc.stdout.strip().splitlines()[-1]
    assert Path(last_line) == tmp / "run" / "summary.json"
    summary = json.loads(Path(last_line).read_text())
    for side in ("before", "after"):
        for key in (
            "exact_match",
            "quality",
            "teacher_reward",
            "kendall_tau",
            "top1_agreement",
            "loss",
            "teacher_q_tau",
        ):
            assert key in summary[side]
        assert 0.0 <= summary[side]["exact_match"] <= 1.0
        assert 0.0 <= summary[side]["loss"] <= 0.7  # a JSD in nats is at most ln 2
    assert summary["delta"]["quality"] == pytest.approx(
        summary["after"]["quality"] - summary["before"]["quality"]
    )
    for part in ("generation", "teacher_scoring", "calibration", "training", "other"):
        assert summary["timings"][f"mean_{part}_s"] > 0
    assert summary["timings"]["epochs"] == 3


def test_run_says_whether_the_student_improved(smoke_run):
    """summary.json, the last terminal lines and the MLflow tag `pad.outcome` carry the verdict
    on the held-out headline metric, so a run list or sweep can filter on it."""
    tmp, proc = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    verdict = summary["outcome"]
    assert verdict["metric"] == "exact_match"
    assert verdict["before"] == summary["before"]["exact_match"]
    assert verdict["after"] == summary["after"]["exact_match"]
    tags = _client(tmp).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["pad.outcome"] == verdict["verdict"]
    assert (
        f"outcome: {verdict['verdict'].upper() if verdict['verdict'] == 'worse' else verdict['verdict']}"
        in proc.stdout
    )
    assert "GPU available" not in proc.stdout + proc.stderr


def test_zoo_build_output_is_whole_when_piped(smoke_run):
    """The zoo built by the smoke run (a fresh cache): no raw Lightning bar, the card's table
    with every column header whole although the output is a pipe (80 columns by default)."""
    _, proc = smoke_run
    assert "zoo: training teacher" in proc.stdout
    assert "Epoch 0/" not in proc.stdout
    assert "judge pairs (dq>=0.2)" in proc.stdout and "judge top-1 of 4" in proc.stdout


def test_the_judge_check_runs_before_training_and_is_logged(smoke_run):
    """experiment=smoke calibrates (alpha 0.8) with calibration.check.refuse=false: the check
    prints its line before training and logs its numbers under judge/."""
    tmp, proc = smoke_run
    line = next(x for x in proc.stdout.splitlines() if x.startswith("judge check ("))
    assert line.startswith("judge check (teacher judge, 8 validation prompts x 4, ")
    assert "accuracy " in line and "order agreement " in line
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    run_ = client.get_run(summary["mlflow_run_id"])
    metrics, params = run_.data.metrics, run_.data.params
    assert metrics["judge/agreement_pairs"] > 0
    for key in ("accuracy", "agreement"):  # the micro student's samples may grade no pair
        if metrics[f"judge/{key}_pairs"]:
            low, high = metrics[f"judge/{key}_low"], metrics[f"judge/{key}_high"]
            assert low <= metrics[f"judge/{key}"] <= high
    assert _steps(client, run_.info.run_id, "judge/agreement") == [0]
    verdict = "at chance (trained anyway)" if metrics["judge/at_chance"] else "above chance"
    assert params["judge/verdict"] == verdict and params["judge/check_prompts"] == "8"


def test_a_synthetic_judge_without_reference_answers_stops_at_start(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in "abcdef"))
    proc = run(
        tmp_path,
        "calibration.judge=synthetic",
        "data=jsonl",
        f"data.path={prompts}",
        "data.val_size=2",
        "data.test_size=2",
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1]  # (after the datasets library's progress)
    assert proc.returncode != 0
    assert last.startswith("config error: calibration.judge=synthetic: draws its answers")
    assert "train prompts of data=jsonl have none" in last
    zoo = tmp_path / "cache" / "zoo"  # (made by the config check, which tests it is writable)
    assert not zoo.exists() or not any(zoo.iterdir())  # refused before any model was built


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_mlflow_run_has_params_metrics_and_artifacts(smoke_run):
    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    run_ = client.get_run(summary["mlflow_run_id"])
    run_id = run_.info.run_id
    assert run_.data.params["n"] == "4"
    assert run_.data.params["loss.name"] == "ppd"
    assert "calibration.template" in run_.data.params
    counts = {k: int(v) for k, v in run_.data.params.items() if k.endswith("_parameters")}
    assert counts["model.student_parameters"] == counts["model.student_trainable_parameters"] > 0
    assert counts["model.teacher_parameters"] > counts["model.student_parameters"]
    # One x-axis: optimizer steps the weights had when a value was measured. 3 epochs x 2 steps.
    assert _steps(client, run_id, "train/loss") == [0, 1, 2, 3, 4, 5]
    lrs = [m.value for m in client.get_metric_history(run_id, "train/lr")]
    assert len(lrs) == 6 and lrs[0] < lrs[-1]  # warm-up
    for key in ("rollout/distinct_fraction", "system/time/generation_s", "system/time/training_s"):
        assert _steps(client, run_id, key) == [0, 2, 4], key  # at each epoch's first step
    # test/*: one series, before (step 0) and after (last step), equal to the summary
    for name in ("exact_match", "teacher_reward", "kendall_tau"):
        history = client.get_metric_history(run_id, f"test/{name}")
        assert [(m.step, m.value) for m in history] == [
            (0, pytest.approx(summary["before"][name])),
            (6, pytest.approx(summary["after"][name])),
        ]
    assert _steps(client, run_id, "val/exact_match") == [0, 4]  # step 0, then after epoch 2
    assert not [k for k in run_.data.metrics if k.startswith(("before/", "after/", "delta/"))]
    assert "system/cpu_utilization_percentage" in run_.data.metrics
    # the experiment opens in MLflow's model-training view; the description is the command
    assert client.get_experiment(run_.info.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    assert run_.data.tags["mlflow.note.content"] == (
        "`python -m pad_lightning.run experiment=smoke "
        f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db`"  # (hydra.* overrides are not kept)
    )
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.yaml", "summary.json", "rollouts.json", "plots"} <= artifacts
    plots = {a.path: a.file_size for a in client.list_artifacts(run_id, "plots")}
    for name in ("learning_curves", "before_after", "epoch_time", "score_agreement"):
        assert plots[f"plots/{name}.png"] > 10_000, name
    contexts = {d.dataset.name: {t.value for t in d.tags} for d in run_.inputs.dataset_inputs}
    assert contexts == {
        "toy-train": {"train"},
        "toy-validation": {"validation"},
        "toy-test": {"test"},
    }


def test_rollout_table_grows_with_an_epoch_column(smoke_run):
    import pandas as pd

    from pad_lightning.reporting.figures import rollouts_from_mlflow
    from pad_lightning.training.callbacks import TABLE_COLUMNS

    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    # (MlflowClient.load_table searches with the global tracking URI, not the client's)
    table = pd.DataFrame(rollouts_from_mlflow(_client(tmp), summary["mlflow_run_id"]))
    assert tuple(c for c in table.columns if c in TABLE_COLUMNS) == TABLE_COLUMNS
    # log_rollouts_every=2 of 3 epochs: epochs 0 and 2 (the last), 8 prompts x n=4 each
    assert table.groupby("epoch").size().to_dict() == {0: 32, 2: 32}
    for _, group in table.groupby(["epoch", "prompt"]):
        assert sorted(group.teacher_rank) == sorted(group.student_rank) == [1, 2, 3, 4]
        best = group.sort_values("teacher_rank")
        assert list(best.teacher_score) == sorted(best.teacher_score, reverse=True)
        best = group.sort_values("student_rank")
        assert list(best.student_score) == sorted(best.student_score, reverse=True)
    assert table.reference.notna().all() and table.q.between(0, 1).all()
    assert table.log_p_sel.notna().all()  # experiment=smoke calibrates (alpha 0.8)
    # t = 0.2 r_T + 0.8 log p_sel
    assert (
        (0.2 * table.teacher_reward + 0.8 * table.log_p_sel - table.teacher_score).abs() < 1e-4
    ).all()


def test_epoch_time_plot_has_one_bar_per_epoch(smoke_run):
    """plots/epoch_time.png as drawn from the run's metrics: 3 bars for 3 epochs, each as tall
    as its epoch's parts; the run's fit and total seconds are logged apart (system/run/)."""
    from pad_lightning.reporting.figures import epoch_time, history_from_mlflow

    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    history = history_from_mlflow(client, summary["mlflow_run_id"])
    (ax,) = epoch_time(history).axes
    bars: dict[int, float] = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2)
        bars[x] = bars.get(x, 0.0) + patch.get_height()
    per_epoch: dict[int, float] = {}  # every system/time/ metric, summed per step
    for key, points in history.items():
        for step, value in points if key.startswith("system/time/") else ():
            per_epoch[step] = per_epoch.get(step, 0.0) + value
    assert summary["timings"]["epochs"] == len(bars) == len(per_epoch) == 3
    assert [bars[x] for x in (0, 1, 2)] == pytest.approx([per_epoch[s] for s in sorted(per_epoch)])
    assert ax.get_title().startswith("Time per epoch by phase (3 epochs, ")
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    assert metrics["system/run/fit_s"] == pytest.approx(summary["timings"]["fit_s"])
    assert metrics["system/run/total_s"] == pytest.approx(summary["timings"]["total_s"])


def test_first_metric_is_test_exact_match_and_answers_table_opens_first(smoke_run):
    from pad_lightning.data.answers import ANSWER_COLUMNS
    from pad_lightning.reporting.figures import rollouts_from_mlflow

    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    run_id = summary["mlflow_run_id"]
    run_ = client.get_run(run_id)
    # MLflow's compare view colours parallel coordinates by the first metric a run logged
    assert next(iter(run_.data.metrics)) == "test/exact_match"
    test_at = min(m.timestamp for m in client.get_metric_history(run_id, "test/exact_match"))
    cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert cpu and min(m.timestamp for m in cpu) >= test_at
    # the evaluation view opens on the first table: the trained student's test answers
    tables = json.loads(run_.data.tags["mlflow.loggedArtifacts"])
    assert [t["path"] for t in tables] == ["test_answers.json", "rollouts.json"]
    rows = rollouts_from_mlflow(client, run_id, "test_answers.json")
    assert len(rows) == 16 and tuple(rows[0]) == ANSWER_COLUMNS  # data.test_size of smoke
    assert len({r["prompt"] for r in rows}) == 16 and all(r["reference"] for r in rows)
    for metric in ("exact_match", "quality"):
        mean = sum(r[metric] for r in rows) / len(rows)
        assert mean == pytest.approx(summary["after"][metric], abs=1e-6), metric


def test_student_is_an_mlflow_model_that_generates(smoke_run):
    from transformers import AutoTokenizer

    tmp, _ = smoke_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    client = _client(tmp)
    run_ = client.get_run(summary["mlflow_run_id"])
    models = client.search_logged_models(
        experiment_ids=[run_.info.experiment_id],
        filter_string=f"source_run_id = '{run_.info.run_id}'",
    )
    assert [m.name for m in models] == ["student"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    pipe = mlflow.transformers.load_model(f"models:/{models[0].model_id}")
    local = AutoTokenizer.from_pretrained(tmp / "run" / "student")
    prompt = local.apply_chat_template(
        [{"role": "user", "content": "rev abc"}], tokenize=False, add_generation_prompt=True
    )
    out = pipe(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)
    # the same weights as the run's HF folder: the same greedy answer
    from transformers import pipeline as hf_pipeline

    reference = hf_pipeline("text-generation", model=str(tmp / "run" / "student"))
    expected = reference(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == expected[0]["generated_text"]


def test_checkpoint_has_student_only_and_student_folder_loads(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _ = smoke_run
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("student.") for k in keys)
    student = AutoModelForCausalLM.from_pretrained(tmp / "run" / "student")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "run" / "student")
    assert tokenizer.chat_template
    for name, value in student.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"student.{name}"])


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cmd(tmp_path, *overrides, f"hydra.sweep.dir={tmp_path}/sweep"), "--multirun"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_multirun_is_one_parent_run_with_named_tagged_children_and_a_table(tmp_path):
    """The issue's sweep: `--multirun experiment=smoke n=2,4 loss=ppd,vpd` (1 epoch each)."""
    proc = _multirun(
        tmp_path, "trainer.max_epochs=1", "logger.log_student=false", "n=2,4", "loss=ppd,vpd"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = (tmp_path / "sweep").resolve()
    # Hydra's job lines, then the comparison table (2 x 2, one run per cell)
    job_lines = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert [line.split(" : ")[0] for line in job_lines] == ["#0", "#1", "#2", "#3"]
    assert job_lines[0].endswith(" n=2 loss=ppd")
    # each job's place and the sweep's ETA; the MLflow link once; no Lightning device lines
    assert "  job 1/4\n" in proc.stdout and "  job 4/4, sweep ETA " in proc.stdout
    assert proc.stdout.count("open it: mlflow ui") == 1
    assert "GPU available" not in proc.stdout + proc.stderr
    assert "4 jobs, 4 finished; swept: loss, n" in proc.stdout
    compare_out = proc.stdout[proc.stdout.index("4 jobs, 4 finished") :]
    table_rows = [line for line in compare_out.splitlines() if line.startswith("│ ")]
    assert sorted(row.split("│")[1:3] for row in table_rows) == [
        [" ppd  ", " 2 "],
        [" ppd  ", " 4 "],
        [" vpd  ", " 2 "],
        [" vpd  ", " 4 "],
    ]
    assert "rows ranked by " in compare_out
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 4
    client = _client(tmp_path)
    parent_id = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert (
        parent.info.run_name == "sweep: n=2,4 loss=ppd,vpd (experiment=smoke trainer.max_epochs=1)"
    )
    assert parent.data.tags["sweep.dir"] == str(sweep)
    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert {"compare/compare.png", "compare/compare.csv"} <= logged
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert {json.loads(s.read_text())["mlflow_run_id"] for s in summaries} == {
        c.info.run_id for c in children
    }
    # who won: named on the parent (tag, params, metric) and in a line, then the link to the
    # jobs best first; each job has its own colour in the UI
    assert parent.data.tags["sweep.best_run_id"] in {c.info.run_id for c in children}
    best = client.get_run(parent.data.tags["sweep.best_run_id"])
    assert parent.data.params == {
        "best.n": best.data.params["n"],
        "best.loss": best.data.params["loss.name"],
    }
    assert "best/test/exact_match" in parent.data.metrics
    best_line = next(x for x in proc.stdout.splitlines() if x.startswith("best: "))
    assert f"run {best.info.run_name}" in best_line
    link = proc.stdout.split("the sweep's runs, best ", 1)[1].splitlines()[0]
    assert link.endswith(f"/runs?workflowType=machine_learning&viewStateShareKey={parent_id}")
    assert len({c.data.tags["mlflow.runColor"] for c in children}) == 4
    # names say what each run is (not one RNG-drawn name for all): the swept overrides, which
    # fit in the run list's name column (the shared ones are in the sweep's name and the tags)
    assert sorted(c.info.run_name for c in children) == [
        f"n={n},loss={loss}" for n in (2, 4) for loss in ("ppd", "vpd")
    ]
    for c in children:
        tags = c.data.tags
        assert c.info.status == "FINISHED"
        assert tags["override.n"] == c.data.params["n"]
        assert tags["override.loss"] == c.data.params["loss.name"]
        assert tags["sweep.dir"] == str(sweep)
        assert tags["sweep.job"] in ("0", "1", "2", "3")
        assert tags["sweep.swept"] == "n,loss"
        assert tags["override.experiment"] == "smoke"
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in (
            "true",
            "false",
        )
        assert "plots/learning_curves.png" in {
            a.path for a in client.list_artifacts(c.info.run_id, "plots")
        }


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    proc = _multirun(
        tmp_path, "trainer.max_epochs=1", "logger.log_student=false", "trainer.optim.lr=1e12,1e-3"
    )
    assert proc.returncode == 1
    assert "job #0 (" in proc.stderr and "training error: step" in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"sweep {(tmp_path / 'sweep').resolve()}: 1 job(s) failed: #0 (")
    )
    assert (tmp_path / "sweep" / "1" / "summary.json").is_file()  # job 1 ran after job 0 failed
    client = _client(tmp_path)
    parent_id = json.loads((tmp_path / "sweep" / "mlflow_parent.json").read_text())["run_id"]
    assert client.get_run(parent_id).info.status == "FAILED"
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted((c.data.tags["sweep.job"], c.info.status) for c in children) == [
        ("0", "FAILED"),
        ("1", "FINISHED"),
    ]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_crashed_run_stays_running_and_resumes_into_the_same_mlflow_run(tmp_path):
    """SIGKILL (a crash): the MLflow run never looks finished; resume logs every step once.
    SIGTERM and Ctrl-C are in test_faults.py."""
    run_dir = tmp_path / "run"
    cmd = _cmd(tmp_path, "trainer.max_epochs=6", f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # a test run launched in the background (`cmd &` without job control) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler: restore the default
        preexec_fn=_default_sigint,
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch_at_kill < 5
    run_id = json.loads((run_dir / "run_state.json").read_text())["mlflow_run_id"]
    assert _client(tmp_path).get_run(run_id).info.status == "RUNNING"

    resumed = run(tmp_path, f"resume={run_dir}")
    summary = json.loads(Path(resumed.stdout.strip().splitlines()[-1]).read_text())
    assert summary["resumed"] is True
    assert summary["mlflow_run_id"] == run_id
    assert _client(tmp_path).get_run(run_id).info.status == "FINISHED"
    history = _client(tmp_path).get_metric_history(run_id, "train/loss")
    # every logged value, not distinct steps: each step once, before and after the kill
    assert sorted(m.step for m in history) == list(range(6 * 2))


def test_self_teacher_control_is_one_override(tmp_path):
    proc = run(
        tmp_path,
        "model.teacher.zoo=student",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}/run",
    )
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    params = _client(tmp_path).get_run(summary["mlflow_run_id"]).data.params
    assert params["model.teacher.zoo"] == "student"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("n=1", "n=1"),
        ("calibration.alpha=1.5", "calibration.alpha"),
        ("rollout.temperature=-1", "rollout.temperature"),
        ("loss.name=nope", "loss.name"),
        ("n=16", "n=16"),
        ("loss.divergence=tv", "loss.divergence"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("calibration.mode=setwise", "calibration.mode"),
        ("decomposition=iterative decomposition.group_size=3", "decomposition.group_size"),
        ("model.zoo.cache_dir=/proc/forbidden", "model.zoo.cache_dir"),
        ("strategy=fsdp strategy.teacher=everywhere", "strategy.teacher"),
        ("strategy=fsdp strategy.param_dtype=fp8", "strategy.param_dtype"),
        ("strategy=fsdp trainer.accelerator=cpu strategy.cpu_offload=true", "strategy.cpu_offload"),
        ("strategy=zero3", "strategy"),
        ("trainer.strategy=ddp", "trainer.strategy"),
        ("calibration.judge=oracle", "calibration.judge"),
        ("calibration.synthetic.accuracy=0.3", "calibration.synthetic.accuracy"),
        ("calibration.check.refuse=maybe", "calibration.check.refuse"),
    ],
)
def test_bad_config_stops_at_start_with_one_line(tmp_path, override, key):
    proc = run(tmp_path, *override.split(), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: ") and key in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing was built before the check


def test_n16_jsd_message_names_the_options_that_work(tmp_path):
    proc = run(tmp_path, "n=16", check=False)
    message = proc.stderr.strip()
    assert message.startswith("config error: n=16: loss=ppd loss.divergence=jsd enumerates")
    for option in (
        "loss.divergence=kl",
        "decomposition=split decomposition.group_size=8",
        "decomposition=iterative decomposition.group_size=8",
        "loss=vpd",
    ):
        assert option in message


def _summary_and_run(tmp: Path, proc: subprocess.CompletedProcess):
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    return summary, _client(tmp).get_run(summary["mlflow_run_id"])


def test_n16_with_exact_kl_runs(tmp_path):
    proc = run(tmp_path, "n=16", "loss.divergence=kl", "trainer.max_epochs=2")
    summary, run_ = _summary_and_run(tmp_path, proc)
    assert run_.data.params["loss.divergence"] == "kl"
    assert summary["after"]["loss"] > 0  # KL(P_T || P_S) over 16! rankings, by the subset DP
    assert "rollout/teacher_ranking_entropy" in run_.data.metrics
    history = _client(tmp_path).get_metric_history(run_.info.run_id, "rollout/response_length")
    assert len(history) == 2


def test_iterative_decomposition_makes_n_over_k_rollouts_per_epoch(tmp_path):
    proc = run(
        tmp_path,
        "decomposition=iterative",
        "decomposition.group_size=2",
        "calibration.mode=pairwise",
        "trainer.max_epochs=2",
    )
    _, run_ = _summary_and_run(tmp_path, proc)
    client = _client(tmp_path)
    # n = 4 as 2 rounds of 2 samples: 2 x 2 optimizer steps per epoch (8 prompts, batches of 4)
    assert len(client.get_metric_history(run_.info.run_id, "train/loss")) == 2 * 2 * 2
    assert run_.data.params["decomposition.name"] == "iterative"
    assert run_.data.metrics["system/tokens/calibration"] > 0  # pairwise MCQs over each round's 2


def test_ddp_on_two_cpu_processes_writes_one_summary_into_one_mlflow_run(tmp_path):
    proc = run(
        tmp_path,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "strategy=ddp",
        f"hydra.run.dir={tmp_path}/run",
    )
    printed = [line for line in proc.stdout.splitlines() if line.endswith("summary.json")]
    assert printed == [str(tmp_path / "run" / "summary.json")]  # rank 0 only
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())
    assert state["mlflow_run_id"] == summary["mlflow_run_id"]
    assert (
        len(
            _client(tmp_path).search_runs(
                [_client(tmp_path).get_experiment_by_name("pad-lightning").experiment_id]
            )
        )
        == 1
    )
