"""pad_lightning.reporting.figures: figures from a fake run history and rollout table (and back from MLflow)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from PIL import Image

from pad_lightning.reporting import figures as plots

STEPS = 30  # optimizer steps = epochs (one step per rollout round)
TEST_METRICS = {  # before, after
    "exact_match": (0.41, 0.85),
    "quality": (0.81, 0.98),
    "teacher_reward": (-1.54, -0.17),
    "kendall_tau": (0.63, 0.93),
    "loss": (0.18, 0.03),
}
PARTS = {
    "generation": 0.15,
    "teacher_scoring": 0.48,
    "training": 0.13,
    "validation": 0.04,
    "other": 0.05,
}


def fake_history() -> dict[str, list[tuple[int, float]]]:
    h = {f"test/{m}": [(0, b), (STEPS, a)] for m, (b, a) in TEST_METRICS.items()}
    h["test/answer_truncated"] = [(0, 0.0)]  # logged once only: no before/after pair
    h["val/exact_match"] = [(s, 0.41 + 0.01 * s) for s in range(0, STEPS + 1, 5)]
    h["train/loss"] = [(s, 0.2 * math.exp(-s / 10) + 0.01 * (s % 3)) for s in range(1, STEPS + 1)]
    h["train/lr"] = [(s, 1e-3) for s in range(1, STEPS + 1)]
    for part, base in PARTS.items():
        h[f"system/time/{part}_s"] = [(s, base + 0.001 * s) for s in range(1, STEPS + 1)]
    h["rollout/sample_quality"] = [(s, 0.5 + 0.01 * s) for s in range(1, STEPS + 1)]
    h["rollout/distinct_fraction"] = [(s, 0.9 - 0.01 * s) for s in range(1, STEPS + 1)]
    return h


def fake_rollouts(with_q: bool = True) -> list[dict]:
    """Epoch 0: student ranks each prompt's samples reversed; epoch 1: in the teacher's order."""
    rows = []
    for epoch in (0, 1):
        for p in range(5):
            for k in range(4):
                teacher = float(k + p)
                student = -teacher if epoch == 0 else 2 * teacher - 7
                rows.append(
                    {
                        "epoch": epoch,
                        "prompt": f"rev w{p}",
                        "reference": None,
                        "response": f"r{k}",
                        "q": k / 3 if with_q else None,
                        "teacher_reward": teacher,
                        "log_p_sel": None,
                        "teacher_score": teacher,
                        "student_score": student,
                        "teacher_rank": 3 - k,
                        "student_rank": 3 - k,
                    }
                )
    return rows


@pytest.fixture(scope="module")
def figures():
    return plots.run_figures(fake_history(), fake_rollouts())


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """One tmp sqlite store with a run holding the fake history and a rollout table in 2 parts."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    root = tmp_path_factory.mktemp("plots")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp = client.create_experiment("plots", artifact_location=str(root / "artifacts"))
    run = client.create_run(exp).info.run_id
    bare = client.create_run(exp).info.run_id  # no table artifact
    history = fake_history()
    # logged in reverse order with increasing timestamps: the reader must sort by step
    metrics = [
        Metric(key, value, 1000 + i, step)
        for i, (key, step, value) in enumerate(
            (k, s, v) for k, points in history.items() for s, v in reversed(points)
        )
    ]
    for i in range(0, len(metrics), 500):
        client.log_batch(run, metrics=metrics[i : i + 500])
    rows = fake_rollouts()
    for epoch in (0, 1):  # log_table appends to the existing table artifact
        part = [r for r in rows if r["epoch"] == epoch]
        client.log_table(
            run, data={c: [r[c] for r in part] for c in part[0]}, artifact_file="rollouts.json"
        )
    return client, run, bare, history, rows, root


def test_history_and_rollouts_from_mlflow(mlflow_run):
    client, run, bare, history, rows, _ = mlflow_run
    got = plots.history_from_mlflow(client, run)
    assert set(got) == set(history)
    for key, points in history.items():
        assert got[key] == [(s, pytest.approx(v)) for s, v in sorted(points)]
    assert got["test/exact_match"][0] == (0, pytest.approx(0.41))
    got_rows = plots.rollouts_from_mlflow(client, run)
    assert len(got_rows) == len(rows)  # both log_table calls, in order; None survives the trip
    for got_row, row in zip(got_rows, rows, strict=True):
        assert got_row == pytest.approx(row)  # MLflow keeps 10 digits of q
    assert plots.rollouts_from_mlflow(client, bare) is None


def test_figures_from_mlflow_match_plain_data(mlflow_run):
    client, run, _, _, _, root = mlflow_run
    figs = plots.run_figures(
        plots.history_from_mlflow(client, run), plots.rollouts_from_mlflow(client, run)
    )
    assert sorted(figs) == sorted(plots.run_figures(fake_history(), fake_rollouts()))
    paths = plots.save_figures(figs, root / "png")
    assert [p.name for p in paths] == [f"{name}.png" for name in figs]
    for path in paths:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        with Image.open(path) as image:
            width, height = image.size
            assert width > 300 and height > 200
            assert len(set(image.convert("L").getdata())) > 10  # not a blank canvas


def test_all_figures_titled(figures):
    assert sorted(figures) == sorted(
        ["learning_curves", "before_after", "epoch_time", "score_agreement", "rollout_quality"]
    )
    for name, fig in figures.items():
        assert fig.get_suptitle() or fig.axes[0].get_title(), name
        for ax in fig.axes[:1] if name != "before_after" else fig.axes[:4]:
            assert ax.get_ylabel(), name


def test_learning_curves(figures):
    history = fake_history()
    loss_ax, val_ax = figures["learning_curves"].axes
    assert loss_ax.get_shared_x_axes().joined(loss_ax, val_ax)
    raw = loss_ax.get_lines()[0]
    assert list(raw.get_xdata()) == [s for s, _ in history["train/loss"]]
    assert list(raw.get_ydata()) == pytest.approx([v for _, v in history["train/loss"]])
    val = val_ax.get_lines()[0]
    assert len(val.get_xdata()) == len(history["val/exact_match"]) == 7
    test_points = val_ax.get_lines()[1]  # test exact match before and after, as markers
    assert list(test_points.get_xdata()) == [0, STEPS]
    assert list(test_points.get_ydata()) == pytest.approx([0.41, 0.85])
    assert val_ax.get_xlabel() == "optimizer step" and val_ax.get_ylabel()
    assert loss_ax.get_legend() is not None and val_ax.get_legend() is not None


def test_before_after_bars(figures):
    fig = figures["before_after"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    # answer_truncated has no "after" and is left out; one panel per remaining metric
    assert [ax.get_title().split(" ")[0] for ax in visible] == list(TEST_METRICS)
    for ax, (before, after) in zip(visible, TEST_METRICS.values(), strict=True):
        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [b.get_height() for b in bars] == pytest.approx([before, after])
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == [
        "before (step 0)",
        f"after (step {STEPS})",
    ]


def test_epoch_time_stacks(figures):
    (ax,) = figures["epoch_time"].axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        p.replace("_", " ") for p in PARTS
    ]
    assert len(bars) == len(PARTS) and all(len(b) == STEPS for b in bars)
    # the top of the last stack is the epoch's total
    top = [r.get_y() + r.get_height() for r in bars[-1]]
    expected = [sum(base + 0.001 * s for base in PARTS.values()) for s in range(1, STEPS + 1)]
    assert top == pytest.approx(expected)


def test_score_agreement_uses_last_epoch(figures):
    fig = figures["score_agreement"]
    ax = fig.axes[0]
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    offsets = points.get_offsets()
    last = [r for r in fake_rollouts() if r["epoch"] == 1]
    assert len(offsets) == len(last) == 20
    assert [tuple(o) for o in offsets] == [(r["teacher_score"], r["student_score"]) for r in last]
    assert list(points.get_array()) == pytest.approx([r["q"] for r in last])
    assert len(fig.axes) == 2  # the colour bar for q
    # epoch 1 agrees within every prompt (epoch 0 would give -1)
    assert "Kendall tau 1.000 (5 prompts)" in ax.get_title()
    assert "epoch 1 (20 samples)" in ax.get_title()


def test_score_agreement_without_q():
    fig = plots.run_figures({}, fake_rollouts(with_q=False))["score_agreement"]
    assert len(fig.axes) == 1  # no colour bar
    (points,) = fig.axes[0].collections
    assert points.get_array() is None and len(points.get_offsets()) == 20


def test_rollout_quality_lines(figures):
    (ax,) = figures["rollout_quality"].axes
    lines = ax.get_lines()
    assert len(lines) == 2 and all(len(line.get_xdata()) == STEPS for line in lines)
    assert list(lines[0].get_ydata()) == pytest.approx(
        [0.5 + 0.01 * s for s in range(1, STEPS + 1)]
    )
    assert len(ax.get_legend().get_texts()) == 2


def test_missing_data_skips_figures():
    assert plots.run_figures({}, None) == {}
    h = fake_history()
    only_val = {"val/exact_match": h["val/exact_match"]}
    figs = plots.run_figures(only_val, [])
    assert list(figs) == ["learning_curves"] and len(figs["learning_curves"].axes) == 1
    no_after = {k: v[:1] for k, v in h.items() if k.startswith("test/")}
    assert "before_after" not in plots.run_figures(no_after)
    # calibration missing from the time metrics: stacked without it
    assert "calibration" not in [
        t.get_text() for t in plots.run_figures(h)["epoch_time"].axes[0].get_legend().get_texts()
    ]
    # rollout rows without scores
    unscored = [{**r, "teacher_score": None} for r in fake_rollouts()]
    assert "score_agreement" not in plots.run_figures({}, unscored)
    nan_history = {"train/loss": [(1, float("nan"))]}
    assert plots.run_figures(nan_history) == {}


def test_rank_statistics_by_hand():
    # pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant -> tau 4/6; sum d^2 = 2 -> rho 0.8
    assert plots.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert plots.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(plots.kendall_tau_b([1, 1, 1], [1, 2, 3]))
    # tau-b with a tie in b: C=2, D=0, ties only in b = 1 -> 2 / sqrt(3 * 2)
    assert plots.kendall_tau_b([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / math.sqrt(6))


def test_no_pyplot_state():
    code = (
        "import sys; from pad_lightning.reporting import figures as plots; "
        "from test_figures import fake_history, fake_rollouts; "
        "figs = plots.run_figures(fake_history(), fake_rollouts()); "
        "assert len(figs) == 5; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=str(__import__("pathlib").Path(__file__).parent),
    )
