"""End-of-run figures from plain data: a metric history and the rollout table.

Pure functions on matplotlib `Figure` objects (Agg canvas, no pyplot, so no global figure
state): `history_from_mlflow` and `rollouts_from_mlflow` read a run back from MLflow,
`run_figures` makes the figures that the data allows (a figure whose data is missing is left
out), `save_figures` writes them as PNGs.

    client = MlflowClient(tracking_uri)
    figures = run_figures(history_from_mlflow(client, run_id), rollouts_from_mlflow(client, run_id))
    save_figures(figures, run_dir / "plots")
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

History = dict[str, list[tuple[int, float]]]

# The test metrics of the before/after table (experiment.report) and panels, in this order (those
# present); the first four are the headline metrics
REPORTED_METRICS = (
    "exact_match",
    "quality",
    "teacher_reward",
    "kendall_tau",
    "top1_agreement",
    "teacher_q_tau",
    "student_q_tau",
    "sample_quality",
    "loss",
    "answer_length",
)
TIME_PREFIX = "system/time/"  # the per-epoch time breakdown as logged (callbacks.mlflow_key)
TIME_PARTS = ("generation", "teacher_scoring", "calibration", "training", "validation", "other")
BEFORE_COLOR, AFTER_COLOR = "#9e9e9e", "#1f77b4"


def history_from_mlflow(client, run_id: str) -> History:
    """Metric name -> [(step, value)] sorted by step (then logging time) for every metric of a run.

    Values logged twice at one step (e.g. test/* of a run with no training step) are both kept, in
    logging order, so the first entry is always "before" and the last "after".
    """
    run = client.get_run(run_id)
    history: History = {}
    for key in sorted(run.data.metrics):
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        history[key] = [(int(m.step), float(m.value)) for m in points]
    return history


def rollouts_from_mlflow(
    client, run_id: str, artifact_file: str = "rollouts.json"
) -> list[dict] | None:
    """The rows of a run's MLflow table artifact (as written by `log_table`), None if it has none."""
    parent = str(Path(artifact_file).parent).replace(".", "")
    names = {Path(a.path).name for a in client.list_artifacts(run_id, parent or None)}
    if Path(artifact_file).name not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, artifact_file, tmp)
        return table_rows(json.loads(Path(path).read_text()))


def table_rows(table: Mapping) -> list[dict]:
    """Rows of an MLflow table ({"columns": [...], "data": [[...]]}) or of a dict of columns."""
    if "columns" in table and "data" in table:
        return [dict(zip(table["columns"], row, strict=False)) for row in table["data"]]
    columns = list(table)
    length = len(table[columns[0]]) if columns else 0
    return [{c: table[c][i] for c in columns} for i in range(length)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(history: History, key: str) -> tuple[list[int], list[float]]:
    points = [(s, v) for s, v in history.get(key, ()) if _finite(v)]
    return [s for s, _ in points], [v for _, v in points]


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall tau-b of two equally long sequences; NaN when either is constant (or n < 2).

    Pure Python on purpose: `ranking.agreement.kendall_tau` goes through torchmetrics, which
    imports matplotlib.pyplot, and figures must not touch pyplot's global state."""
    concordant = discordant = ties_a = ties_b = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when undefined."""
    ra, rb = _ranks(a), _ranks(b)
    n = len(ra)
    if n < 2:
        return float("nan")
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def learning_curves(history: History) -> Figure | None:
    """train/loss and val/exact_match against the optimizer step (panels for those present)."""
    panels = [
        (key, label)
        for key, label in (("train/loss", "training loss"), ("val/exact_match", "exact match"))
        if _series(history, key)[0]
    ]
    if not panels:
        return None
    fig = _new_figure(8, 2.8 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        steps, values = _series(history, key)
        if key == "train/loss":
            ax.plot(steps, values, color="#9ecae1", lw=0.8, label="train/loss (per step)")
            window = max(1, len(values) // 20)
            if window > 1:
                ax.plot(
                    steps,
                    _moving_average(values, window),
                    color="#08519c",
                    lw=1.8,
                    label=f"moving average ({window} steps)",
                )
            ax.set_title("Training loss")
        else:
            ax.plot(steps, values, marker="o", ms=3, color="#d62728", label="val/exact_match")
            t_steps, t_values = _series(history, "test/exact_match")
            if t_steps:
                ax.plot(
                    [t_steps[0], t_steps[-1]] if len(t_steps) > 1 else t_steps,
                    [t_values[0], t_values[-1]] if len(t_values) > 1 else t_values,
                    ls="none",
                    marker="*",
                    ms=12,
                    color="black",
                    label="test/exact_match (before, after)",
                )
            ax.set_title("Validation exact match")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle("Learning curves")
    return fig


def before_after(history: History, metrics: Sequence[str] = REPORTED_METRICS) -> Figure | None:
    """One small panel per test metric: its value at the first vs the last logged step."""
    pairs = []
    for m in metrics:
        steps, values = _series(history, f"test/{m}")
        if len(values) >= 2:
            pairs.append((m, values[0], values[-1], steps[0], steps[-1]))
    if not pairs:
        return None
    cols = min(4, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = _new_figure(2.6 * cols + 0.4, 2.5 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (m, before, after, first, last) in zip(axes, pairs, strict=False):
        bars = ax.bar(
            [0, 1],
            [before, after],
            color=[BEFORE_COLOR, AFTER_COLOR],
            label=[f"before (step {first})", f"after (step {last})"],
        )
        ax.bar_label(bars, fmt="%.3g", fontsize="small", padding=2)
        ax.set_xticks([0, 1], ["before", "after"])
        ax.set_title(f"{m} ({after - before:+.3g})", fontsize="medium")
        ax.set_ylabel("value")
        ax.axhline(0, color="black", lw=0.6)
        low, high = min(before, after, 0.0), max(before, after, 0.0)
        pad = 0.18 * (high - low or 1.0)
        if high == low:  # both 0: a unit axis above the zero line
            ax.set_ylim(0.0, 1.0)
        else:
            ax.set_ylim(low - (pad if low < 0 else 0), high + (pad if high > 0 else 0))
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    fig.suptitle("Held-out test metrics before and after training")
    return fig


def epoch_time(history: History) -> Figure | None:
    """Stacked bars of the system/time/<part>_s metrics, one bar per epoch."""
    parts = [p for p in TIME_PARTS if _series(history, f"{TIME_PREFIX}{p}_s")[0]]
    extra = sorted(
        k[len(TIME_PREFIX) : -len("_s")]
        for k in history
        if k.startswith(TIME_PREFIX)
        and k.endswith("_s")
        and k[len(TIME_PREFIX) : -2] not in TIME_PARTS
    )
    parts += [p for p in extra if _series(history, f"{TIME_PREFIX}{p}_s")[0]]
    if not parts:
        return None
    steps = sorted({s for p in parts for s in _series(history, f"{TIME_PREFIX}{p}_s")[0]})
    index = {s: i for i, s in enumerate(steps)}
    epochs = list(range(len(steps)))
    fig = _new_figure(9, 4.2)
    ax = fig.subplots()
    bottom = [0.0] * len(steps)
    cmap = matplotlib.colormaps["tab10"]
    for i, part in enumerate(parts):
        heights = [0.0] * len(steps)
        for s, v in zip(*_series(history, f"{TIME_PREFIX}{part}_s"), strict=True):
            heights[index[s]] += v
        ax.bar(
            epochs,
            heights,
            bottom=bottom,
            width=1.0 if len(steps) > 30 else 0.8,
            color=cmap(i % 10),
            label=part.replace("_", " "),
            linewidth=0,
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("epoch (rollout round)")
    ax.set_ylabel("seconds")
    total = sum(bottom)
    ax.set_title(f"Time per epoch by phase ({len(steps)} epochs, {total:.1f} s in all)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="phase")
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlim(-0.6, len(steps) - 0.4)
    return fig


def _score(value) -> float | None:
    return float(value) if _finite(value) else None


def score_agreement(rollouts: Sequence[Mapping] | None) -> Figure | None:
    """Teacher vs student score of the last epoch's rollout samples, coloured by q if known."""
    if not rollouts:
        return None
    epochs = [r.get("epoch") for r in rollouts if _finite(r.get("epoch"))]
    last = max(epochs) if epochs else None
    rows = [
        r
        for r in rollouts
        if (last is None or r.get("epoch") == last)
        and _score(r.get("teacher_score")) is not None
        and _score(r.get("student_score")) is not None
    ]
    if not rows:
        return None
    teacher = [float(r["teacher_score"]) for r in rows]
    student = [float(r["student_score"]) for r in rows]
    # the scores rank the n samples of one prompt: the matching statistic is the within-prompt tau
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(str(r.get("prompt")), []).append(i)
    taus = [
        kendall_tau_b([teacher[i] for i in idx], [student[i] for i in idx])
        for idx in by_prompt.values()
        if len(idx) > 1
    ]
    taus = [t for t in taus if not math.isnan(t)]
    stats = []
    if taus:
        stats.append(
            f"mean within-prompt Kendall tau {sum(taus) / len(taus):.3f} ({len(taus)} prompts)"
        )
    rho = spearman(teacher, student)
    if not math.isnan(rho):
        stats.append(f"Spearman (all samples) {rho:.3f}")

    fig = _new_figure(6.6, 5.4)
    ax = fig.subplots()
    q = [_score(r.get("q")) for r in rows]
    known = [i for i, v in enumerate(q) if v is not None]
    unknown = [i for i, v in enumerate(q) if v is None]
    if unknown:
        ax.scatter(
            [teacher[i] for i in unknown],
            [student[i] for i in unknown],
            s=14,
            alpha=0.6,
            color="#1f77b4" if not known else "#bbbbbb",
            label="sample" if not known else "sample (q unknown)",
        )
    if known:
        points = ax.scatter(
            [teacher[i] for i in known],
            [student[i] for i in known],
            c=[q[i] for i in known],
            cmap="viridis",
            s=14,
            alpha=0.8,
            label="sample (colour: true quality q)",
        )
        fig.colorbar(points, ax=ax, label="true quality q")
    ax.set_xlabel("teacher score (calibrated)")
    ax.set_ylabel("student score")
    epoch_text = f"epoch {last}" if last is not None else "last epoch"
    ax.set_title(
        f"Teacher vs student scores, {epoch_text} ({len(rows)} samples)\n" + "; ".join(stats),
        fontsize="medium",
    )
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def rollout_quality(history: History) -> Figure | None:
    """rollout/sample_quality and rollout/distinct_fraction (and all_identical_fraction) per step."""
    keys = [
        ("rollout/sample_quality", "sample quality (mean q)", "-", "#2ca02c"),
        ("rollout/distinct_fraction", "distinct fraction", "-", "#ff7f0e"),
        ("rollout/all_identical_fraction", "all-identical fraction (no gradient)", "--", "#7f7f7f"),
    ]
    present = [k for k in keys if _series(history, k[0])[0]]
    if not any(k[0] != "rollout/all_identical_fraction" for k in present):
        return None
    fig = _new_figure(8, 4)
    ax = fig.subplots()
    for key, label, style, color in present:
        steps, values = _series(history, key)
        ax.plot(steps, values, ls=style, color=color, lw=1.4, label=f"{label} ({key})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("value (0 to 1)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), max(1.02, ax.get_ylim()[1]))
    ax.set_title("Rollout samples per epoch: quality and diversity")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def run_figures(history: History, rollouts: Sequence[Mapping] | None = None) -> dict[str, Figure]:
    """The figures the data allows, by name (learning_curves, before_after, epoch_time,
    score_agreement, rollout_quality); a figure whose data is missing is left out."""
    made = {
        "learning_curves": learning_curves(history),
        "before_after": before_after(history),
        "epoch_time": epoch_time(history),
        "score_agreement": score_agreement(rollouts),
        "rollout_quality": rollout_quality(history),
    }
    return {name: fig for name, fig in made.items() if fig is not None}


def save_figures(figures: Mapping[str, Figure], out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """Write each figure as <out_dir>/<name>.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths
