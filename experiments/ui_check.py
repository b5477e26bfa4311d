"""Real-browser check of the MLflow UI for a sweep, plus screenshots.

Starts `mlflow ui` on the tracking store, opens it in headless Chromium (Playwright driving the
system browser) and checks, from the rendered DOM, what a person would see:

  landing   the experiment's default view (MLflow 3.17 opens GenAI unless the browser chose
            "Model training"; a warning, or a failure with --strict-landing)
  runs      the run list (Model training view): the sweep's parent row, its child runs hidden
            until expanded and then shown nested (right below it, indented), names distinct in
            the DOM and as displayed (the name column truncates)
  compare   MLflow's compare-runs page for the child runs: every name, a parallel-coordinates plot
  charts    a child run's "Model metrics" tab: charts of train/loss and test/exact_match drawn
  sweep charts  the run list's chart mode: the train/loss chart has a line per child run
  artifact  its Artifacts tab with plots/learning_curves.png selected and decoded by the browser
  rollouts  rollouts.json rendered as a table (Artifacts tab), and the experiment's evaluation
            (artifact compare) view opening on test_answers.json, the trained students' answers
and saves a 1400x900 PNG of each to --out.

    pip install -e '.[ui]'   # playwright; it drives /usr/bin/chromium, no browser download
    python experiments/ui_check.py [--tracking-uri sqlite:///mlflow.db] [--sweep RUN_ID]

Exit status: 0 all checks passed, 1 some check failed (one `FAIL <check>: <reason>` line each),
2 it could not check (no Playwright/browser, the server did not start, no sweep found).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
ML = "workflowType=machine_learning"
# Sidebar links only the GenAI experiment view has (the model-training one has Runs/Models/Traces).
GENAI_LINKS = ("/overview", "/chat-sessions", "/judges", "/evaluation-runs", "/playground")
CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
REQUIRED_CHARTS = ("train/loss", "test/exact_match")
# The charts the pictures show (the chart search box takes a regular expression).
CHART_FILTER = "^(train/(loss|lr)|val/(loss|exact_match)|test/(loss|exact_match))$"
PLOT = "plots/learning_curves.png"
TABLE = "rollouts.json"
ANSWERS = "test_answers.json"  # the table the evaluation view opens on (listed first)
TABLE_COLUMNS = ("epoch", "prompt", "response")

# The name a run-name cell shows: its text cut where the cell clips it (CSS ellipsis), + "...".
JS_VISIBLE_TEXT = """(el) => {
  const text = el.textContent;
  const cell = el.closest('.ag-cell') || el;
  const right = Math.min(el.getBoundingClientRect().right, cell.getBoundingClientRect().right);
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const node = walker.nextNode();
  if (!node) return text;
  const r = document.createRange();
  r.setStart(node, 0); r.setEnd(node, node.length);
  if (r.getBoundingClientRect().right <= right + 0.5) return text;
  const limit = right - 10;  // room for the ellipsis glyph
  let lo = 0, hi = node.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    r.setEnd(node, mid);
    if (r.getBoundingClientRect().right <= limit) lo = mid; else hi = mid - 1;
  }
  return node.data.slice(0, lo) + '\u2026';
}"""

# [card selector, title] -> the traces of the chart card titled so ({name, n: points}), [] if not
# drawn yet, null if there is no such card.
JS_CHART_TRACES = """([card, title]) => {
  const h = Array.from(document.querySelectorAll(card + ' h4')).find(h => h.title === title);
  if (!h) return null;
  const plot = h.closest(card).querySelector('.js-plotly-plot');
  if (!plot || !plot.data) return [];
  return plot.data.map(d => ({name: d.name || '', n: (d.y || []).filter(v => v !== null).length}));
}"""

# Rows of the run table's pinned-left part (where the name cell lives).
JS_RUN_ROWS = """() => Array.from(document.querySelectorAll('.ag-pinned-left-cols-container .ag-row'))
  .map(r => {
    const a = r.querySelector('a[href*="/runs/"]');
    return {id: r.getAttribute('row-id'), index: Number(r.getAttribute('row-index')),
            name: a ? a.textContent : null, left: a ? a.getBoundingClientRect().left : null};
  }).sort((x, y) => x.index - y.index)"""


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shots: list[str] = field(default_factory=list)

    def fail(self, check: str, reason: str) -> None:
        self.failures.append(f"FAIL {check}: {reason}")
        print(f"  FAIL {reason}", flush=True)

    def warn(self, check: str, reason: str) -> None:
        self.warnings.append(f"WARN {check}: {reason}")
        print(f"  WARN {reason}", flush=True)

    def ok(self, check: str, what: str) -> None:
        self.notes.append(f"ok   {check}: {what}")
        print(f"  ok   {what}", flush=True)


class CannotCheck(Exception):
    """The check could not run at all (exit 2)."""


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_executable() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


@contextlib.contextmanager
def mlflow_ui(uri: str, port: int, log_path: Path, timeout: float):
    """`mlflow ui` on 127.0.0.1:port (one worker), stopped (its whole process group) on exit."""
    cmd = [*mlflow_executable(), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1"]
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise CannotCheck(f"mlflow ui exited with {proc.returncode}; see {log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/health", timeout=2) as r,
            ):
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise CannotCheck(
                    f"mlflow ui did not answer on {base} in {timeout:.0f} s; see {log_path}"
                )
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def api(base: str, endpoint: str, body: dict | None = None, params: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise CannotCheck(f"{endpoint}: HTTP {e.code} {e.read()[:300]!r}") from e


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}


def search_runs(base: str, exp_id: str, filter_string: str) -> list[dict]:
    runs, token = [], None
    while True:
        body = {
            "experiment_ids": [exp_id],
            "filter": filter_string,
            "max_results": 1000,
            "order_by": ["attributes.start_time DESC"],
        }
        if token:
            body["page_token"] = token
        out = api(base, "runs/search", body)
        runs += out.get("runs", [])
        token = out.get("next_page_token")
        if not token:
            return runs


@dataclass
class Sweep:
    exp_id: str
    exp_tags: dict[str, str]
    parent_id: str
    parent_name: str
    parent_tags: dict[str, str]
    children: list[dict]  # {"id", "name"}, in start order

    @property
    def child_ids(self) -> list[str]:
        return [c["id"] for c in self.children]


def find_sweep(base: str, experiment: str, sweep_id: str | None) -> Sweep:
    exp = api(base, "experiments/get-by-name", params={"experiment_name": experiment})["experiment"]
    exp_id = exp["experiment_id"]
    exp_tags = {t["key"]: t.get("value", "") for t in exp.get("tags", [])}
    if sweep_id is None:
        parents = search_runs(base, exp_id, "tags.`sweep.parent` = 'true'")
        if not parents:
            raise CannotCheck(f"experiment {experiment!r} has no run tagged sweep.parent = 'true'")
        sweep_id = parents[0]["info"]["run_id"]
    parent = api(base, "runs/get", params={"run_id": sweep_id})["run"]
    children = search_runs(base, exp_id, f"tags.`mlflow.parentRunId` = '{sweep_id}'")
    if not children:
        raise CannotCheck(f"sweep {sweep_id} has no child runs (tag mlflow.parentRunId)")
    children.sort(key=lambda r: int(r["info"]["start_time"]))
    return Sweep(
        exp_id=exp_id,
        exp_tags=exp_tags,
        parent_id=sweep_id,
        parent_name=parent["info"].get("run_name", ""),
        parent_tags=tags_of(parent),
        children=[
            {"id": r["info"]["run_id"], "name": r["info"].get("run_name", "")} for r in children
        ],
    )


# ---------------------------------------------------------------------------------------------
# The browser


class UI:
    def __init__(self, page, base: str, out: Path, report: Report, timeout_ms: int):
        self.page, self.base, self.out, self.report = page, base, out, report
        self.timeout = timeout_ms
        page.set_default_timeout(timeout_ms)

    def goto(self, route: str) -> None:
        self.page.goto(f"{self.base}/#{route}")

    def wait_js(self, fn: str, arg=None, timeout_ms: int = 20000) -> bool:
        """Wait until the JS function `fn(arg)` is truthy; False (no exception) on a timeout."""
        try:
            self.page.wait_for_function(fn, arg=arg, timeout=min(self.timeout, timeout_ms))
            return True
        except Exception:
            return False

    def close_assistant(self) -> None:
        """Close the "MLflow Assistant" side panel (open on first visit; it hides a third of it)."""
        close = self.page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        with contextlib.suppress(Exception):
            if close.count():
                close.first.click(timeout=3000)

    def shot(self, name: str) -> None:
        self.page.mouse.move(1, 1)  # no hover tooltips in the picture
        path = self.out / name
        self.page.screenshot(path=str(path))
        self.report.shots.append(str(path))
        print(f"  shot {path}", flush=True)

    def view_kind(self) -> str:
        """'genai' or 'model training', from the experiment sidebar's links."""
        self.page.wait_for_selector("aside nav a", state="attached")
        hrefs = self.page.locator("aside a").evaluate_all(
            "els => els.map(e => e.getAttribute('href') || '')"
        )
        return "genai" if any(g in h for h in hrefs for g in GENAI_LINKS) else "model training"

    def expect_model_training(self, check: str) -> None:
        kind = self.view_kind()
        if kind == "genai":
            self.report.fail(check, "the page shows the GenAI experiment view, not Model training")


def check_landing(ui: UI, sweep: Sweep, strict: bool) -> None:
    """What opening the experiment shows a fresh browser (nothing chosen in the sidebar yet)."""
    print("landing: the experiment opened without a view chosen", flush=True)
    r = ui.report
    ui.goto(f"/experiments/{sweep.exp_id}")
    page = ui.page
    page.wait_for_function(
        "() => /\\/experiments\\/[^/]+\\/[a-z-]+/.test(location.hash)", timeout=ui.timeout
    )
    kind = ui.view_kind()
    # What it lands on: GenAI overview/traces, or the runs table.
    if kind == "model training":
        page.wait_for_selector('input[name="runs-view-mode"]', state="attached")
    else:
        page.wait_for_function("() => document.querySelector('main, #root').innerText.length > 200")
        page.wait_for_timeout(1500)  # its charts' "no data" placeholders
    ui.close_assistant()
    ui.shot("01_landing.png")
    route = page.evaluate("location.hash")
    kind_tag = sweep.exp_tags.get("mlflow.experimentKind", "<none>")
    if kind == "genai":
        msg = (
            f"opening the experiment lands on the GenAI view ({route}) although its "
            f"mlflow.experimentKind is {kind_tag!r}: MLflow 3.17's UI ignores that tag and "
            "uses the sidebar's GenAI/Model training switch (browser localStorage, default "
            "GenAI) or ?workflowType=machine_learning in the URL"
        )
        (r.fail if strict else r.warn)("landing", msg)
    else:
        r.ok("landing", f"lands on the Model training view ({route})")


def run_rows(page) -> list[dict]:
    return page.evaluate(JS_RUN_ROWS)


def check_runs(ui: UI, sweep: Sweep) -> None:
    print("runs: the experiment's run list, sweep parent expanded", flush=True)
    r, page = ui.report, ui.page
    ui.goto(f"/experiments/{sweep.exp_id}/runs?{ML}")
    page.wait_for_selector('input[name="runs-view-mode"]', state="attached")
    ui.expect_model_training("runs")
    ui.close_assistant()
    parent_row = f'.ag-pinned-left-cols-container [row-id="{sweep.parent_id}"]'
    try:
        page.wait_for_selector(parent_row, timeout=min(ui.timeout, 20000))
    except Exception:
        # Not among the first runs listed: show only this sweep's runs (they share sweep.dir).
        sweep_dir = sweep.parent_tags.get("sweep.dir")
        query = (
            f"tags.`sweep.dir` = '{sweep_dir}'"
            if sweep_dir
            else f"attributes.run_id = '{sweep.parent_id}'"
        )
        r.warn("runs", f"the sweep's parent is not among the first runs listed; searching {query}")
        box = page.get_by_placeholder("metrics.rmse", exact=False)
        box.fill(query)
        box.press("Enter")
        page.wait_for_selector(parent_row)
    page.wait_for_timeout(500)

    rows = run_rows(page)
    ids = [x["id"] for x in rows]
    child_ids = set(sweep.child_ids)
    top_level_children = child_ids & set(ids)
    expander = page.locator(f'{parent_row} button[data-component-id*="runnamecellrenderer"]')
    if not expander.count():
        how = "its child runs are top-level rows" if top_level_children else "no child rows"
        r.fail("runs", f"the sweep's parent row has no expand button ({how}): runs not nested")
    if expander.count() and not top_level_children:
        r.ok("runs", f"the parent {sweep.parent_name!r} is one collapsed row with an expand button")
        expander.first.click()
        ui.wait_js(
            "ids => ids.every(id => document.querySelector("
            '`.ag-pinned-left-cols-container [row-id="${id}"]`))',
            sweep.child_ids,
        )
        page.wait_for_timeout(500)
        rows = run_rows(page)

    by_id = {x["id"]: x for x in rows}
    shown = [c for c in sweep.children if c["id"] in by_id]
    if len(shown) != len(sweep.children):
        r.fail(
            "runs",
            f"{len(shown)} of the sweep's {len(sweep.children)} child runs are shown after expanding its parent",
        )
    if sweep.parent_id in by_id and shown:
        p = by_id[sweep.parent_id]
        idx = sorted(by_id[c["id"]]["index"] for c in shown)
        contiguous = idx == list(range(p["index"] + 1, p["index"] + 1 + len(shown)))
        indented = all((by_id[c["id"]]["left"] or 0) > (p["left"] or 0) + 4 for c in shown)
        if contiguous and indented:
            r.ok("runs", f"{len(shown)} child runs shown right below the parent, indented")
        else:
            r.fail(
                "runs",
                f"the child runs are not shown nested under the parent (right below it: {contiguous}, indented: {indented})",
            )

    # Names: distinct in the DOM, and as the (truncating) name column displays them.
    names = [by_id[c["id"]]["name"] for c in shown]
    if len(set(names)) != len(names):
        r.fail("runs", f"child run names are not distinct: {names}")
    elif names:
        r.ok("runs", f"child run names distinct: {names}")
    visible = []
    for c in shown:
        link = page.locator(
            f'.ag-pinned-left-cols-container [row-id="{c["id"]}"] a[href*="/runs/"]'
        ).first
        visible.append(link.evaluate(JS_VISIBLE_TEXT))
    if visible and len(set(visible)) != len(visible):
        r.fail(
            "runs",
            f"child run names as displayed in the list are not distinct (the name column truncates them): {visible}",
        )
    elif visible:
        r.ok("runs", f"child run names as displayed: {visible}")
    parent_link = page.locator(f'{parent_row} a[href*="/runs/"]').first
    if parent_link.count():
        shown_parent = parent_link.evaluate(JS_VISIBLE_TEXT)
        if shown_parent != sweep.parent_name:
            r.warn(
                "runs",
                f"the parent's name is displayed as {shown_parent!r} (full: {sweep.parent_name!r})",
            )
    page.get_by_text("matching runs").first.click()  # no focus frame on the expanded cell
    ui.shot("02_runs_nested.png")


def check_compare(ui: UI, sweep: Sweep) -> None:
    print("compare: MLflow's compare-runs page of the child runs", flush=True)
    r, page = ui.report, ui.page
    runs = urllib.parse.quote(json.dumps(sweep.child_ids, separators=(",", ":")))
    exps = urllib.parse.quote(json.dumps([sweep.exp_id]))
    ui.goto(f"/compare-runs?runs={runs}&experiments={exps}&{ML}")
    page.wait_for_selector("text=/Comparing \\d+ Runs/")
    ui.expect_model_training("compare")
    ui.close_assistant()
    page.wait_for_selector(".pcp-plot.js-plotly-plot")
    page.wait_for_function("() => (document.querySelector('.pcp-plot').data || []).length > 0")
    header = page.locator("text=/Comparing \\d+ Runs/").first.inner_text()
    n = len(sweep.children)
    if f"Comparing {n} Runs" not in header:
        r.fail("compare", f"the compare page says {header!r}, expected {n} runs")
    text = page.inner_text("body")
    missing = [c["name"] for c in sweep.children if c["name"] not in text]
    if missing:
        r.fail("compare", f"run names missing from the compare page: {missing}")
    else:
        r.ok("compare", f"{header}; all {n} run names shown")
    dims = page.evaluate(
        "() => (document.querySelector('.pcp-plot').data[0].dimensions || [])"
        ".map(d => ({label: d.label, values: Array.from(d.values || [])}))"
    )
    if not dims:
        r.fail("compare", "the parallel coordinates plot has no axes")
    else:
        labels = [d["label"] for d in dims]
        r.ok("compare", f"parallel coordinates axes: {labels}")
        selected_metrics = page.locator(
            ".du-bois-light-select-selection-item-content"
        ).all_inner_texts()
        for d in dims:
            if (
                d["label"] in selected_metrics
                and len({round(float(v), 12) for v in d["values"]}) <= 1
            ):
                r.warn(
                    "compare",
                    f"parallel coordinates colour metric {d['label']!r} is the same for all runs "
                    f"({d['values'][:1]}): MLflow picks the first metric the runs logged",
                )
    ui.shot("03_compare.png")


def chart_data(page, title: str) -> list[dict] | None:
    """Traces (x, y lengths) of the chart card titled `title`, or None if there is no such card."""
    return page.evaluate(JS_CHART_TRACES, [CHART_CARD, title])


def check_charts(ui: UI, sweep: Sweep, run_id: str) -> None:
    print("charts: a child run's Model metrics tab", flush=True)
    r, page = ui.report, ui.page
    ui.goto(f"/experiments/{sweep.exp_id}/runs/{run_id}/model-metrics?{ML}")
    page.wait_for_selector(CHART_CARD)
    ui.expect_model_training("charts")
    ui.close_assistant()
    sections = page.locator(
        '[data-testid="experiment-view-compare-runs-section-header"]'
    ).all_inner_texts()
    sections = [" ".join(s.split()).removesuffix(" Add chart") for s in sections]
    r.ok("charts", f"chart sections, top to bottom: {sections}")
    search = page.get_by_placeholder("Search metric charts")
    for key in REQUIRED_CHARTS:
        search.fill(key)
        ui.wait_js(
            f"a => {{ const t = ({JS_CHART_TRACES})(a); return t && t.length > 0; }}",
            [CHART_CARD, key],
        )
        traces = chart_data(page, key)
        if traces is None:
            r.fail("charts", f"no chart for {key} in the run's Model metrics tab")
        elif not traces or max(t["n"] for t in traces) == 0:
            r.fail("charts", f"the chart for {key} is there but draws no points")
        else:
            points = max(t["n"] for t in traces)
            (r.warn if points < 2 else r.ok)("charts", f"chart {key}: {points} point(s)")
    # The picture: the headline charts together (the search box takes a regular expression).
    search.fill(CHART_FILTER)
    page.wait_for_timeout(500)
    ui.wait_js(
        "s => Array.from(document.querySelectorAll(s)).slice(0, 3)"
        ".every(c => { const p = c.querySelector('.js-plotly-plot'); return p && p.data; })",
        CHART_CARD,
    )
    page.wait_for_timeout(500)
    ui.shot("04_run_charts.png")


def check_sweep_charts(ui: UI, sweep: Sweep) -> None:
    """The run list's chart mode: the sweep's runs overlaid, one line per child run."""
    print("sweep charts: the experiment's chart view, the sweep's runs overlaid", flush=True)
    r, page = ui.report, ui.page
    ui.goto(f"/experiments/{sweep.exp_id}/runs?{ML}")
    page.wait_for_selector('input[name="runs-view-mode"]', state="attached")
    ui.close_assistant()
    page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
    page.wait_for_selector(CHART_CARD)
    # The chart view draws the runs the run list shows: expand the sweep so its children count.
    child = f'[row-id="{sweep.child_ids[0]}"]'
    expander = page.locator(
        f'[row-id="{sweep.parent_id}"] button[data-component-id*="runnamecellrenderer"]'
    )
    if not page.locator(child).count() and expander.count():
        expander.first.click()
        ui.wait_js("s => !!document.querySelector(s)", child)
    page.get_by_placeholder("Search metric charts").fill(CHART_FILTER)
    key = REQUIRED_CHARTS[0]
    ui.wait_js(
        f"a => {{ const t = ({JS_CHART_TRACES})(a); return t && t.length >= {len(sweep.children)}; }}",
        [CHART_CARD, key],
    )
    traces = chart_data(page, key) or []
    lines = [t for t in traces if t["n"] > 0]
    names = {c["name"] for c in sweep.children}
    drawn = [n for n in names for t in lines if t["name"] == n or t["name"].startswith(n + " (")]
    if len(set(drawn)) < len(names):
        r.fail(
            "sweep charts",
            f"the {key} chart draws {len(set(drawn))} of the sweep's {len(names)} runs "
            f"(lines: {[t['name'] for t in lines]})",
        )
    else:
        r.ok("sweep charts", f"the {key} chart draws all {len(names)} child runs")
    page.wait_for_timeout(1000)
    ui.shot("04b_sweep_charts.png")


def check_artifacts(ui: UI, sweep: Sweep, run_id: str) -> None:
    print(f"artifact: the run's Artifacts tab with {PLOT} selected", flush=True)
    r, page = ui.report, ui.page
    ui.goto(f"/experiments/{sweep.exp_id}/runs/{run_id}/artifacts?{ML}")
    folder, name = PLOT.rsplit("/", 1)
    page.get_by_text(folder, exact=True).first.click()
    page.get_by_text(name, exact=True).first.click()
    ui.expect_model_training("artifact")
    ui.close_assistant()
    img = f'img[alt="{PLOT}"]'
    ui.wait_js("s => { const i = document.querySelector(s); return i && i.complete; }", img)
    info = page.evaluate(
        "s => { const i = document.querySelector(s); return i && "
        "{w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}; }",
        img,
    )
    if not info:
        r.fail("artifact", f"no image for {PLOT} in the artifact viewer")
    elif info["w"] <= 0 or info["shown"] <= 0:
        r.fail(
            "artifact",
            f"{PLOT} does not render (natural width {info['w']}, shown {info['shown']:.0f} px)",
        )
    else:
        r.ok(
            "artifact",
            f"{PLOT} renders ({info['w']}x{info['h']}, shown {info['shown']:.0f} px wide)",
        )
    with contextlib.suppress(Exception):  # selecting the file scrolls the tree: back to its top
        page.get_by_text(folder, exact=True).first.scroll_into_view_if_needed(timeout=3000)
    ui.shot("05_artifact_plot.png")

    print(f"rollouts: {TABLE} in the Artifacts tab", flush=True)
    page.get_by_text(TABLE, exact=True).first.click()
    try:
        page.wait_for_selector("text=View as table", timeout=min(ui.timeout, 20000))
        page.wait_for_function(
            "() => document.querySelectorAll('table th, [role=columnheader]').length > 0",
            timeout=min(ui.timeout, 20000),
        )
    except Exception:
        pass
    headers = [h.strip() for h in page.locator("table th, [role=columnheader]").all_inner_texts()]
    rows = page.locator("[role=table] [role=row]:not(.table-isHeader), table tbody tr").count()
    missing = [c for c in TABLE_COLUMNS if c not in headers]
    if not headers:
        r.fail("rollouts", f"{TABLE} is not shown as a table in the Artifacts tab")
    elif missing:
        r.fail("rollouts", f"{TABLE} table lacks columns {missing} (has {headers})")
    else:
        r.ok(
            "rollouts",
            f"{TABLE} shown as a table: columns {headers}, {rows} rows on its first page",
        )
    ui.shot("06_rollouts_table.png")


def check_evaluation_view(ui: UI, sweep: Sweep) -> None:
    """The experiment's third run-list mode ("evaluation"/artifact view): logged tables compared."""
    print(f"rollouts: the experiment's evaluation (artifact compare) view of {ANSWERS}", flush=True)
    r, page = ui.report, ui.page
    ui.goto(f"/experiments/{sweep.exp_id}/runs?{ML}")
    page.wait_for_selector('input[name="runs-view-mode"]', state="attached")
    ui.close_assistant()
    page.locator('label:has(input[name="runs-view-mode"][value="ARTIFACT"])').click()
    # Its selectors read "Table: <name>", "Group by: <columns>", "Compare: <column>".
    js_state = """() => {
      const t = document.body.innerText.split('\\n').map(s => s.trim());
      const after = k => { const i = t.indexOf(k); return i >= 0 ? t[i + 1] : null; };
      return {table: after('Table:'), group: after('Group by:'), compare: after('Compare:')};
    }"""
    ui.wait_js(
        f"() => {{ const s = ({js_state})(); return s.table && s.group && s.compare; }}",
        None,
        30000,
    )
    page.wait_for_timeout(1500)  # the table's cells
    state = page.evaluate(js_state)
    if state["table"] != ANSWERS:
        r.fail(
            "rollouts",
            f"the evaluation view does not open on {ANSWERS} (its table selector: {state['table']!r})",
        )
    else:
        r.ok(
            "rollouts",
            f"evaluation view shows {ANSWERS}: group by {state['group']!r}, compare {state['compare']!r}",
        )
        if state["group"] == "epoch":
            r.warn(
                "rollouts",
                f"the evaluation view groups {ANSWERS} by its first column, 'epoch': one row per "
                f"epoch showing only the first {state['compare']!r} of it (MLflow groups by the first "
                "column and compares the column named 'output', else the first other one)",
            )
    # The parent's name: once in the run list, once more as a column of the evaluation table.
    parent_shown = page.get_by_text(sweep.parent_name, exact=True).count() >= 2
    if parent_shown and page.get_by_text("(empty)", exact=True).count():
        r.warn(
            "rollouts",
            "the sweep's parent run (no table logged) takes a column of the evaluation view, '(empty)'",
        )
    ui.shot("07_rollouts_evaluation.png")


# ---------------------------------------------------------------------------------------------


def launch(p, chromium: str):
    kw = {"headless": True, "args": CHROMIUM_ARGS}
    if chromium:
        kw["executable_path"] = chromium
    return p.chromium.launch(**kw)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="pad-lightning")
    ap.add_argument("--out", default="ui-screenshots", help="screenshot folder")
    ap.add_argument("--port", type=int, default=0, help="mlflow ui port (default: a free one)")
    ap.add_argument(
        "--sweep", default=None, help="parent run id (default: newest sweep.parent run)"
    )
    ap.add_argument(
        "--chromium",
        default=shutil.which("chromium") or "/usr/bin/chromium",
        help="browser executable ('' for Playwright's own)",
    )
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for a page element")
    ap.add_argument(
        "--server-timeout", type=float, default=120, help="seconds to wait for mlflow ui"
    )
    ap.add_argument(
        "--strict-landing",
        action="store_true",
        help="fail (not warn) when opening the experiment lands on the GenAI view",
    )
    args = ap.parse_args()

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("ui_check: needs Playwright: pip install -e '.[ui]' (it drives the system chromium)")
        return 2

    # SIGTERM (e.g. a timeout) unwinds like Ctrl-C, so the server is always stopped.
    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    port = args.port or free_port()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ui_check.") as tmp:
        log_path = Path(tmp) / "mlflow-ui.log"
        try:
            with mlflow_ui(args.tracking_uri, port, log_path, args.server_timeout) as base:
                print(f"mlflow ui on {base} ({args.tracking_uri})", flush=True)
                sweep = find_sweep(base, args.experiment, args.sweep)
                run_id = sweep.children[0]["id"]
                print(
                    f"sweep {sweep.parent_id} {sweep.parent_name!r}: {len(sweep.children)} child runs; "
                    f"run pages of {sweep.children[0]['name']!r} ({run_id})",
                    flush=True,
                )
                with sync_playwright() as p:
                    try:
                        browser = launch(p, args.chromium)
                    except Exception as e:
                        raise CannotCheck(f"cannot start the browser {args.chromium!r}: {e}") from e
                    try:
                        page = browser.new_context(viewport=VIEWPORT).new_page()
                        ui = UI(page, base, out, report, int(args.timeout * 1000))
                        for check, fn in [
                            ("landing", lambda: check_landing(ui, sweep, args.strict_landing)),
                            ("runs", lambda: check_runs(ui, sweep)),
                            ("compare", lambda: check_compare(ui, sweep)),
                            ("charts", lambda: check_charts(ui, sweep, run_id)),
                            ("sweep charts", lambda: check_sweep_charts(ui, sweep)),
                            ("artifact", lambda: check_artifacts(ui, sweep, run_id)),
                            ("rollouts", lambda: check_evaluation_view(ui, sweep)),
                        ]:
                            try:
                                fn()
                            except KeyboardInterrupt:
                                raise
                            except Exception as e:  # a page that never showed what we wait for
                                first = (
                                    str(e).strip().splitlines()[0]
                                    if str(e).strip()
                                    else type(e).__name__
                                )
                                report.fail(check, f"{type(e).__name__}: {first}")
                                with contextlib.suppress(Exception):
                                    ui.shot(f"error_{check}.png")
                    finally:
                        browser.close()
        except CannotCheck as e:
            print(f"ui_check: cannot check: {e}")
            if log_path.exists():
                print("".join(log_path.read_text().splitlines(keepends=True)[-15:]))
            return 2
        except KeyboardInterrupt:
            print("ui_check: interrupted; mlflow ui stopped")
            return 130

    print(
        f"\nsummary ({time.monotonic() - t0:.0f} s): {len(report.notes)} ok, "
        f"{len(report.warnings)} warnings, {len(report.failures)} failures; screenshots in {out}/"
    )
    for line in report.notes + report.warnings + report.failures:
        print(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
