"""Sweep comparison: jobs of a Hydra multirun folder or of an MLflow parent run, grouped by the
swept keys, mean +- std over the replicate keys, ranked by the first metric with the best value
of each metric marked, as a table, a bar chart and CSV/JSON files; and the best job of a sweep
(`best_job`). The command is `python -m pad_lightning.compare` (see its module docstring)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pad_lightning.tracking.mlflow_run import sqlite_path

DEFAULT_METRICS = ("exact_match", "quality", "teacher_reward", "kendall_tau", "delta.exact_match")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SIDES = ("before", "after", "delta", "val")  # val: the last validation (sweep dir: summary.json)
# metrics where lower is better (all others: higher); ranks rows and picks a sweep's best job
LOWER_IS_BETTER = ("loss", "answer_truncated")
BEST_MARK = "*"  # before the best value of a metric column in the printed table
MISSING = "(unset)"  # value of a key that a job does not override


class CompareError(Exception):
    """A target that cannot be compared; the CLI prints `compare: <message>` and exits 2."""


@dataclass
class Job:
    name: str
    overrides: dict[str, str]
    status: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    run_dir: str | None = None

    @property
    def finished(self) -> bool:
        return bool(self.after)

    def value(self, spec: str) -> float | None:
        side, metric = parse_metric(spec)
        if side == "delta":
            if metric in self.delta:
                value = self.delta[metric]
            elif metric in self.before and metric in self.after:
                value = self.after[metric] - self.before[metric]
            else:
                return None
        else:
            value = getattr(self, side).get(metric)
        return float(value) if value is not None and math.isfinite(value) else None

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides.items()) or "(defaults)"


@dataclass
class Sweep:
    source: str
    jobs: list[Job]
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None


@dataclass
class Cell:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Row:
    group: dict[str, str]
    jobs: list[Job]
    replicates: dict[str, list[str]]
    cells: dict[str, Cell]
    best: list[str] = field(default_factory=list)  # the metrics whose best mean this row has


@dataclass
class Comparison:
    swept: list[str]
    group_keys: list[str]
    over: list[str]  # replicate keys that occur in the jobs
    metrics: list[str]
    rows: list[Row]
    unfinished: list[Job]

    def records(self) -> list[dict]:
        """One flat dict per row (the CSV / JSON form)."""
        out = []
        for row in self.rows:
            rec: dict = dict(row.group)
            rec["runs"] = len(row.jobs)
            for key, values in row.replicates.items():
                rec[key] = ",".join(values)
            for spec in self.metrics:
                cell = row.cells[spec]
                rec[f"{spec}_mean"] = cell.mean
                rec[f"{spec}_std"] = cell.std
                rec[f"{spec}_n"] = cell.n
            rec["best"] = list(row.best)
            out.append(rec)
        return out


# ---------------------------------------------------------------------------------------------
# loading


def parse_overrides(overrides: Iterable[str] | None) -> dict[str, str]:
    """["loss=vpd", "+x=1", "~y"] -> {"loss": "vpd", "x": "1", "y": "(deleted)"}."""
    out: dict[str, str] = {}
    for item in overrides or ():
        item = str(item)
        if item.startswith("~"):
            out[item[1:].split("=", 1)[0]] = "(deleted)"
            continue
        key, _, value = item.lstrip("+").partition("=")
        out[key] = value
    return out


def _natural(value: str | None):
    if value is None or value == MISSING:
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _floats(d) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _job_dirs(root: Path) -> list[Path]:
    """Directories holding summary.json or run_state.json at or below root, outermost only."""
    found = {p.parent for name in ("summary.json", "run_state.json") for p in root.rglob(name)}
    dirs = sorted(found, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for d in dirs:
        if not any(d.is_relative_to(k) for k in kept):
            kept.append(d)
    return kept


def _overrides_yaml(job_dir: Path) -> list[str] | None:
    for path in (job_dir / "overrides.yaml", job_dir / ".hydra" / "overrides.yaml"):
        if path.is_file():
            try:
                import yaml

                data = yaml.safe_load(path.read_text())
            except Exception:  # noqa: BLE001 - a fallback only
                continue
            if isinstance(data, list):
                return [str(x) for x in data]
    return None


def load_sweep_dir(path: str | Path) -> Sweep:
    """The jobs below a sweep dir (or one run's dir); CompareError if there are none."""
    root = Path(path)
    if not root.is_dir():
        raise CompareError(f"{path}: not a directory")
    dirs = _job_dirs(root)
    if not dirs:
        raise CompareError(
            f"{path}: not a sweep directory (no summary.json or run_state.json below it)"
        )
    jobs: list[Job] = []
    uris: list[str] = []
    for d in dirs:
        summary = _read_json(d / "summary.json")
        state = _read_json(d / "run_state.json") or {}
        overrides = (summary or {}).get("overrides")
        if overrides is None:
            overrides = state.get("overrides")
        if overrides is None:
            overrides = _overrides_yaml(d)
        name = str(d.relative_to(root)) if d != root else d.name
        job = Job(
            name=name,
            overrides=parse_overrides(overrides),
            status=str(state.get("status") or ("FINISHED" if summary else "UNKNOWN")),
            run_id=(summary or {}).get("mlflow_run_id") or state.get("mlflow_run_id"),
            run_dir=str(d),
        )
        if summary is not None:
            job.before = _floats(summary.get("before"))
            job.after = _floats(summary.get("after"))
            job.delta = _floats(summary.get("delta"))
            job.val = _floats(summary.get("val"))
            if summary.get("tracking_uri"):
                uris.append(str(summary["tracking_uri"]))
        jobs.append(job)

    parent_files = [root / "mlflow_parent.json"]
    if not parent_files[0].is_file():
        parent_files = sorted(root.rglob("mlflow_parent.json"))
    parent = _read_json(parent_files[0]) if len(parent_files) == 1 else None
    parent = parent or {}
    return Sweep(
        source=str(path),
        jobs=_sorted_jobs(jobs),
        parent_run_id=parent.get("run_id"),
        tracking_uri=parent.get("tracking_uri") or (uris[0] if uris else None),
        experiment_id=parent.get("experiment_id"),
    )


def _sorted_jobs(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: [_natural(p) for p in j.name.split("/")])


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_parent_run(client, run_id: str) -> Sweep:
    """The child runs of an MLflow parent run as jobs; CompareError if the run does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(run_id)
    except MlflowException as err:
        raise CompareError(
            f"{run_id}: neither a sweep directory nor a run id in {client.tracking_uri}"
        ) from err
    experiment_ids = [parent.info.experiment_id]
    experiment_ids += [
        e.experiment_id
        for e in client.search_experiments()
        if e.experiment_id != parent.info.experiment_id
    ]
    children = _search_all(client, experiment_ids, f"tags.mlflow.parentRunId = '{run_id}'")

    jobs: dict[str, tuple[Job, int]] = {}
    for run in children:
        tags = run.data.tags
        before, after = {}, {}
        val = {k[4:]: v for k, v in run.data.metrics.items() if k.startswith("val/")}  # the last
        for key in run.data.metrics:
            if not key.startswith("test/"):
                continue
            history = sorted(
                client.get_metric_history(run.info.run_id, key),
                key=lambda m: (m.step, m.timestamp),
            )
            if history:
                before[key[5:]] = float(history[0].value)
            if len(history) >= 2:
                after[key[5:]] = float(history[-1].value)
        job = Job(
            name=tags.get("sweep.job") or run.info.run_name or run.info.run_id,
            overrides={
                k[len("override.") :]: v for k, v in tags.items() if k.startswith("override.")
            },
            status=run.info.status,
            before=_floats(before),
            after=_floats(after),
            val=_floats(val),
            run_id=run.info.run_id,
            run_dir=tags.get("sweep.dir"),
        )
        # a job run twice (e.g. restarted) counts once: the finished, most recent run
        key = (
            f"{tags.get('sweep.dir')}/{tags['sweep.job']}"
            if "sweep.job" in tags
            else run.info.run_id
        )
        rank = (job.finished, run.info.start_time or 0)
        if key not in jobs or rank > jobs[key][1]:
            jobs[key] = (job, rank)
    return Sweep(
        source=run_id,
        jobs=_sorted_jobs([job for job, _ in jobs.values()]),
        parent_run_id=run_id,
        tracking_uri=client.tracking_uri,
        experiment_id=parent.info.experiment_id,
    )


# ---------------------------------------------------------------------------------------------
# the table


def parse_metric(spec: str) -> tuple[str, str]:
    """ "exact_match" -> ("after", "exact_match"); "delta.exact_match" -> ("delta", ...)."""
    side, dot, metric = spec.partition(".")
    if dot and side in SIDES:
        return side, metric
    return "after", spec


def metric_label(spec: str) -> str:
    side, metric = parse_metric(spec)
    return metric if side == "after" else f"{side} {metric}"


def higher_is_better(spec: str) -> bool:
    """Whether a larger value of the metric is better (all but LOWER_IS_BETTER, e.g. loss)."""
    return parse_metric(spec)[1] not in LOWER_IS_BETTER


def objective_spec(name: str) -> str:
    """An optimised metric as the run config names it (`val/<m>`, `after/<m>`, `delta/<m>`) as
    a metric of the table (`val.<m>`, `<m>`, `delta.<m>`)."""
    side, _, metric = str(name).partition("/")
    return metric if side == "after" else f"{side}.{metric}"


def known_metrics(jobs: Sequence[Job]) -> list[str]:
    """The metrics the jobs have, as --metrics names them: `m` (after), then `before.m`,
    `delta.m`, `val.m` where some job has them."""
    out = sorted({m for j in jobs for m in j.after})
    for side in ("before", "delta", "val"):
        have = sorted({m for j in jobs for m in getattr(j, side)})
        if side == "delta":  # computed from before and after where not stored
            have = sorted(set(have) | {m for j in jobs for m in j.before if m in j.after})
        out += [f"{side}.{m}" for m in have]
    return out


def best_job(jobs: Sequence[Job], spec: str, maximize: bool | None = None) -> list[Job]:
    """The finished jobs with the best value of `spec` (several on a tie, in job order; empty if
    none has it). `maximize` defaults to `higher_is_better(spec)`."""
    maximize = higher_is_better(spec) if maximize is None else maximize
    scored = [(v, j) for j in jobs if j.finished and (v := j.value(spec)) is not None]
    if not scored:
        return []
    best = (max if maximize else min)(v for v, _ in scored)
    return [j for v, j in scored if v == best]


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs (a key some jobs lack counts as differing)."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if len({j.overrides.get(k, MISSING) for j in jobs}) > 1]


def table(
    jobs: Sequence[Job], over: Sequence[str] = ("seed",), metrics: Sequence[str] | None = None
) -> Comparison:
    """Group the finished jobs by the swept keys other than `over`; mean +- std per metric."""
    swept = swept_keys(jobs)
    group_keys = [k for k in swept if k not in over]
    present_over = [k for k in over if any(k in j.overrides for j in jobs)]
    finished = [j for j in jobs if j.finished]
    specs = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    if metrics is None:  # the defaults that some finished job has
        specs = [s for s in specs if any(j.value(s) is not None for j in finished)]

    groups: dict[tuple, list[Job]] = {}
    for job in finished:
        groups.setdefault(tuple(job.overrides.get(k, MISSING) for k in group_keys), []).append(job)
    rows = []
    for values in sorted(groups, key=lambda v: [_natural(x) for x in v]):
        members = sorted(
            groups[values], key=lambda j: [_natural(j.overrides.get(k)) for k in present_over]
        )
        rows.append(
            Row(
                group=dict(zip(group_keys, values, strict=True)),
                jobs=members,
                replicates={
                    k: [j.overrides.get(k, MISSING) for j in members] for k in present_over
                },
                cells={
                    s: Cell([v for j in members if (v := j.value(s)) is not None]) for s in specs
                },
            )
        )
    if specs:  # best first by the first metric (ties keep their order), then mark each column
        first, sign = specs[0], -1.0 if higher_is_better(specs[0]) else 1.0
        rows.sort(key=lambda r: (r.cells[first].mean is None, sign * (r.cells[first].mean or 0.0)))
        for spec in specs:
            means = [m for r in rows if (m := r.cells[spec].mean) is not None]
            if len(set(means)) < 2:  # one value, or all equal: nothing is best
                continue
            best = max(means) if higher_is_better(spec) else min(means)
            for row in rows:
                if row.cells[spec].mean == best:
                    row.best.append(spec)
    return Comparison(
        swept=swept,
        group_keys=group_keys,
        over=present_over,
        metrics=specs,
        rows=rows,
        unfinished=[j for j in jobs if not j.finished],
    )


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3f}"


def format_cell(cell: Cell, runs: int, signed: bool = False) -> str:
    """`mean ± std` over the runs with a value (the mean alone for one run), then `(n/runs)`
    when some runs lack it."""
    if not cell.n:
        return "-"
    mean = ("+" if signed and cell.mean >= 0 else "") + _num(cell.mean)
    text = mean if cell.std is None else f"{mean} ± {_num(cell.std)}"
    return text if cell.n == runs else f"{text} ({cell.n}/{runs})"


def ranking_note(comparison: Comparison) -> str:
    """The line under the table: what the rows are ranked by and what the mark means."""
    if not comparison.metrics:
        return ""
    first = comparison.metrics[0]
    order = "highest" if higher_is_better(first) else "lowest"
    lower = [m for m in LOWER_IS_BETTER if any(parse_metric(s)[1] == m for s in comparison.metrics)]
    return (
        f"rows ranked by {metric_label(first)} ({order} first); {BEST_MARK} = best in its column"
        + (f" (lowest for {', '.join(lower)}; highest for the rest)" if lower else " (highest)")
    )


def rich_table(comparison: Comparison, title: str | None = None):
    from rich.table import Table
    from rich.text import Text

    def cell(row: Row, spec: str):
        text = format_cell(row.cells[spec], len(row.jobs), signed=parse_metric(spec)[0] == "delta")
        if spec in row.best:  # the mark before the value: right-aligned values stay aligned
            return Text(f"{BEST_MARK} {text}", style="bold")
        return Text(text)

    t = Table(title=title, title_justify="left")
    for key in comparison.group_keys:
        t.add_column(key, no_wrap=True)
    t.add_column("runs", justify="right", no_wrap=True)
    for key in comparison.over:
        t.add_column(key, no_wrap=True)
    for spec in comparison.metrics:
        t.add_column(metric_label(spec), justify="right", no_wrap=True)
    for row in comparison.rows:
        t.add_row(
            *row.group.values(),
            str(len(row.jobs)),
            *(",".join(v) for v in row.replicates.values()),
            *(cell(row, s) for s in comparison.metrics),
        )
    return t


# ---------------------------------------------------------------------------------------------
# the figure


def _is_numeric(values: Iterable[str]) -> bool:
    return all(_natural(v)[0] == 1 for v in values)


def comparison_figure(comparison: Comparison, metric: str | None = None, title: str | None = None):
    """Bar chart of one metric per group (mean, std error bars, one dot per run); with two group
    keys, one cluster per value of the numeric (or more varied) key and a bar per other value."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or comparison.metrics[0]
    side, name = parse_metric(metric)
    cells = {
        id(r): r.cells.get(metric)
        or Cell([v for j in r.jobs if (v := j.value(metric)) is not None])
        for r in comparison.rows
    }
    rows = [r for r in comparison.rows if cells[id(r)].n]
    keys = comparison.group_keys

    grouped = len(keys) == 2
    if grouped:  # one cluster per value of the outer key, one bar (colour) per inner value
        values = [sorted({r.group[k] for r in rows}, key=_natural) for k in keys]
        numeric = [_is_numeric(v) for v in values]
        if numeric[0] != numeric[1]:
            outer = 0 if numeric[0] else 1
        else:
            outer = 0 if len(values[0]) >= len(values[1]) else 1
        outer_key, inner_key = keys[outer], keys[1 - outer]
        clusters, hues = values[outer], values[1 - outer]
        width = 0.8 / len(hues)
    else:
        width = 0.7

    n_slots = len(clusters) * len(hues) if grouped else len(rows)
    fig = Figure(figsize=(max(7.5, 4.0 + 0.7 * n_slots), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    ticks, tick_labels = [], []
    for i, row in enumerate(rows):
        cell = cells[id(row)]
        if grouped:
            c, h = clusters.index(row.group[outer_key]), hues.index(row.group[inner_key])
            x = c + (h - (len(hues) - 1) / 2) * width
            color, label = cmap(h % 10), once(f"{inner_key}={row.group[inner_key]}")
        else:
            x, color, label = i, cmap(0), None
            ticks.append(i)
            tick_labels.append("\n".join(f"{k}={v}" for k, v in row.group.items()) or "all runs")
        ax.bar(
            x,
            cell.mean,
            width=width,
            color=color,
            yerr=cell.std,
            capsize=4,
            label=label,
            edgecolor="black",
            linewidth=0.5,
        )
        ax.annotate(
            f"{_num(cell.mean)}\nn={cell.n}",
            (x, max(cell.values + [cell.mean + (cell.std or 0.0)])),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="x-small",
        )
        if cell.n > 1:
            ax.plot(
                [x] * cell.n,
                cell.values,
                ls="none",
                marker="o",
                ms=3.5,
                color="black",
                alpha=0.7,
                label=once("single run"),
            )
        if side == "after":
            before = [v for j in row.jobs if (v := j.before.get(name)) is not None]
            if before:
                ax.hlines(
                    statistics.fmean(before),
                    x - 0.35 * width,
                    x + 0.35 * width,
                    colors="#d62728",
                    linewidths=2.5,
                    label=once("before training (group mean)"),
                    zorder=3,
                )
    if grouped:
        ax.set_xticks(range(len(clusters)), [f"{outer_key}={v}" for v in clusters])
        ax.set_xlabel(outer_key)
    else:
        ax.set_xticks(ticks, tick_labels)
        ax.set_xlabel(", ".join(keys) if keys else "")
        pad = max(0.0, (3 - len(rows)) / 2)  # keep one or two bars from filling the axes
        ax.set_xlim(-0.6 - pad, len(rows) - 0.4 + pad)
    ax.axhline(0, color="black", lw=0.6)
    ax.margins(y=0.15)
    low, high = ax.get_ylim()
    if high - low < 1e-9:  # every value 0 (or equal): a readable axis, not 1e-17 ticks
        ax.set_ylim(low - 0.5, high + 0.5)
    ax.set_ylabel(f"test {metric_label(metric)}")
    over = ", ".join(comparison.over) or "runs"
    ax.set_title(
        title
        or f"test {metric_label(metric)}: mean ± std over {over}"
        + (f", by {' x '.join(keys)}" if keys else ""),
        fontsize="medium",
    )
    ax.grid(axis="y", alpha=0.3)
    if labelled:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------
# the command


def _client(uri: str):
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise CompareError(f"no MLflow store at {path}")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def write_outputs(comparison: Comparison, sweep: Sweep, out: Path) -> list[Path]:
    """The PNG and the table as <out stem>.csv / .json; returns the written paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = comparison_figure(comparison)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    records = comparison.records()
    csv_path, json_path = out.with_suffix(".csv"), out.with_suffix(".json")
    columns = list(records[0]) if records else []
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(
            {
                k: "" if v is None else " ".join(v) if isinstance(v, list) else v
                for k, v in r.items()
            }
            for r in records
        )
    json_path.write_text(
        json.dumps(
            {
                "source": sweep.source,
                "parent_run_id": sweep.parent_run_id,
                "swept": comparison.swept,
                "group_keys": comparison.group_keys,
                "over": comparison.over,
                "metrics": comparison.metrics,
                "ranked_by": comparison.metrics[0] if comparison.metrics else None,
                "rows": records,
                "unfinished": [
                    {
                        "job": j.name,
                        "status": j.status,
                        "overrides": j.overrides,
                        "run_id": j.run_id,
                    }
                    for j in comparison.unfinished
                ],
            },
            indent=2,
        )
    )
    return [out, csv_path, json_path]


def log_to_parent(client, run_id: str, paths: Sequence[Path]) -> None:
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path="compare")


def _split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pad_lightning.compare",
        description="Compare the jobs of a sweep (mean ± std over seeds per setting, best first).",
    )
    parser.add_argument("target", help="sweep directory or MLflow parent run id")
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI (default: the sweep's, else {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument(
        "--metrics",
        help="comma-separated: m (after), after.m, before.m, delta.m, val.m; rows are ranked "
        "by the first (default exact_match, quality, teacher_reward, kendall_tau, "
        "delta.exact_match: those present)",
    )
    parser.add_argument(
        "--over", default="seed", help="comma-separated replicate keys (default seed)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--out",
        help="where the chart goes, with the table as .csv and .json beside it (default "
        "<sweep dir>/compare.png or ./compare-<parent id>.png)",
    )
    output.add_argument(
        "--no-log",
        action="store_true",
        help="print the table only: write no files and log nothing to the parent run",
    )
    parser.add_argument(
        "--files-only",
        action="store_true",
        help="write the chart, CSV and JSON but do not log them to the parent run",
    )
    args = parser.parse_args(argv)
    if args.no_log and args.files_only:
        parser.error("argument --files-only: not allowed with argument --no-log")

    from rich.console import Console

    # no wrapping or truncation when piped: the table is as wide as it needs to be
    console = Console(width=1000, soft_wrap=True)
    errors = Console(stderr=True, width=1000, soft_wrap=True)
    try:
        client = None
        target = Path(args.target)
        if target.exists():
            sweep = load_sweep_dir(target)
            default_out = (target if target.is_dir() else target.parent) / "compare.png"
        else:
            uri = args.tracking_uri or DEFAULT_TRACKING_URI
            try:
                client = _client(uri)
            except CompareError as err:
                raise CompareError(
                    f"{args.target}: no such directory, and {err} to look it up as a run id"
                ) from None
            sweep = load_parent_run(client, args.target)
            default_out = Path(f"compare-{args.target}.png")
        metrics = _split(args.metrics) or None
        comparison = table(sweep.jobs, over=_split(args.over), metrics=metrics)
        if not comparison.rows:
            counts = ", ".join(
                f"{s} x{sum(j.status == s for j in sweep.jobs)}"
                for s in sorted({j.status for j in sweep.jobs})
            )
            raise CompareError(
                f"{sweep.source}: no finished job"
                + (f" ({len(sweep.jobs)} jobs: {counts})" if sweep.jobs else " (no child runs)")
            )
        if not comparison.metrics:
            raise CompareError(f"{sweep.source}: none of the default metrics is present")
        known = known_metrics(sweep.jobs)
        for spec in metrics or ():
            side, name = parse_metric(spec)
            if (name if side == "after" else f"{side}.{name}") not in known:
                raise CompareError(f"--metrics {spec}: unknown; valid: {', '.join(known)}")
    except CompareError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2

    n_finished = sum(j.finished for j in sweep.jobs)
    console.print(
        f"{sweep.source}: {len(sweep.jobs)} jobs, {n_finished} finished; "
        f"swept: {', '.join(comparison.swept) or 'nothing'}"
        + (f"; replicates over {', '.join(comparison.over)}" if comparison.over else ""),
        highlight=False,
    )
    console.print(rich_table(comparison))
    console.print(ranking_note(comparison), highlight=False)
    for job in comparison.unfinished:
        console.print(
            f"not finished: job {job.name} ({job.label()}): {job.status}", highlight=False
        )
    if args.no_log:
        return 0

    out = Path(args.out) if args.out else default_out
    paths = write_outputs(comparison, sweep, out)
    console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)

    if sweep.parent_run_id and not args.files_only:
        try:
            if client is None:
                client = _client(args.tracking_uri or sweep.tracking_uri or DEFAULT_TRACKING_URI)
            log_to_parent(client, sweep.parent_run_id, paths)
            console.print(
                f"logged compare/{{{','.join(p.name for p in paths)}}} to parent run "
                f"{sweep.parent_run_id}",
                highlight=False,
            )
        except Exception as err:  # noqa: BLE001 - the table and files are done; say why not logged
            errors.print(
                f"compare: warning: could not log to parent run {sweep.parent_run_id}: {err}",
                highlight=False,
            )
    return 0
