"""Real-browser check that a sweep's winner shows in one screen of the MLflow UI, plus its picture.

Runs a small sweep into a temporary sqlite store (default: `--multirun experiment=smoke
seed=0,1 loss=ppd,vpd`, optimising val/quality: the smoke world's exact match is 0 for every
job), starts `mlflow ui` on 127.0.0.1, opens the run-list link the sweep printed at its end in
headless Chromium (Playwright driving the system browser) and checks what a person sees:

  columns   the optimised metric and the test metrics are columns of the run list
  order     the sweep's jobs only, ordered by the optimised metric, best first
  winner    the first row is the run the sweep's parent names (tag sweep.best_run_id)
  colours   each job has its own colour (the dot before its name)

then saves a 1400x900 PNG (default docs/img/mlflow-sweep-winner.png). The server is stopped and
the store removed at the end (`--keep` keeps the store and prints where).

    pip install -e '.[ui]'   # playwright; it drives /usr/bin/chromium, no browser download
    python experiments/ui_winner.py [--out docs/img/mlflow-sweep-winner.png]

Exit status: 0 all checks passed, 1 some check failed (one `FAIL <check>: <reason>` line each),
2 it could not check (the sweep failed, no Playwright/browser, the server did not start).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import yaml
from ui_check import VIEWPORT, CannotCheck, Report, free_port, launch, mlflow_ui

from pad_lightning.app.configs import OPTIMIZED_METRIC_KEYS, config_dir

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"^the sweep's runs, best (\S+) first: (\S+)$", re.M)
ROWS = ".ag-center-cols-container .ag-row"
# [row-id, column header text, cell text] of the run table, rows in display order
JS_TABLE = """() => {
  const headers = Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))
    .map(h => [h.getAttribute('col-id'), h.innerText.trim()]);
  const rows = Array.from(document.querySelectorAll('.ag-center-cols-container .ag-row'))
    .sort((a, b) => Number(a.getAttribute('row-index')) - Number(b.getAttribute('row-index')))
    .map(r => ({id: r.getAttribute('row-id'),
                cells: Object.fromEntries(Array.from(r.querySelectorAll('[col-id]'))
                  .map(c => [c.getAttribute('col-id'), c.innerText.trim()]))}));
  const dots = Array.from(document.querySelectorAll('.ag-pinned-left-cols-container .ag-row'))
    .map(r => { const dot = r.querySelector('[data-testid="experiment-view-table-run-color"]');
                return dot ? getComputedStyle(dot).backgroundColor : null; });
  return {headers, rows, dots};
}"""


def optimized_key() -> str:
    """The config key naming the optimised metric in the shipped config.yaml."""
    top = yaml.safe_load((Path(config_dir()) / "config.yaml").read_text())
    return next(k for k in OPTIMIZED_METRIC_KEYS if k in top)


def run_sweep(store: Path, overrides: list[str], optimize: str) -> tuple[str, str, str]:
    """Run the sweep; returns (tracking URI, the printed link, the metric it orders by)."""
    uri = f"sqlite:///{store}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        "--multirun",
        *overrides,
        f"{optimized_key()}={optimize}",
        f"logger.tracking_uri={uri}",
        f"hydra.sweep.dir={store}/sweep",
        "logger.log_student=false",
    ]
    print("sweep:", " ".join(cmd[3:]), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=1800)
    found = LINK.search(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise CannotCheck(f"the sweep failed (exit {proc.returncode}) or printed no link:\n{tail}")
    for line in proc.stdout.splitlines():
        if line.startswith(("best: ", "the sweep's runs")):
            print(line, flush=True)
    return uri, found.group(2), found.group(1)


def best_run_id(uri: str, link: str) -> str:
    from mlflow import MlflowClient

    fragment = urllib.parse.urlsplit(link).fragment
    key = urllib.parse.parse_qs(fragment.split("?", 1)[1])["viewStateShareKey"][0]
    return MlflowClient(uri).get_run(key).data.tags["sweep.best_run_id"]  # the key: the parent


def check_page(page, metric: str, best: str, report: Report) -> None:
    table = page.evaluate(JS_TABLE)
    headers = [h for _, h in table["headers"]]
    column = f"metrics.`{metric}`"
    tests = [h for h in headers if h.startswith("test/")]
    if metric not in headers or not tests:
        report.fail("columns", f"the run list's columns are {headers}: no {metric} or test/*")
    else:
        report.ok("columns", f"metric columns shown: {[h for h in headers if '/' in h]}")
    values = [r["cells"].get(column, "") for r in table["rows"]]
    numbers = [float(v.rstrip(".")) for v in values if v]
    if len(table["rows"]) != 4 or len(numbers) != 4:
        report.fail(
            "order", f"{len(table['rows'])} rows with {metric} {values}, expected the 4 jobs"
        )
    elif numbers != sorted(numbers, reverse=True):
        report.fail("order", f"{metric} is not in descending order: {values}")
    else:
        report.ok("order", f"the 4 jobs ordered by {metric}, best first: {values}")
    first = table["rows"][0]["id"] if table["rows"] else None
    if first != best:
        report.fail("winner", f"the first row is run {first}, the sweep names {best} the best")
    else:
        report.ok("winner", f"the first row is the run the sweep names the best ({best})")
    dots = [d for d in table["dots"] if d]
    if len(set(dots)) != len(table["rows"]):
        report.fail("colours", f"the jobs' colours are not distinct: {table['dots']}")
    else:
        report.ok("colours", f"a colour per job: {dots}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        default=["experiment=smoke", "seed=0,1", "loss=ppd,vpd"],
        help="the sweep's overrides (default: experiment=smoke seed=0,1 loss=ppd,vpd)",
    )
    ap.add_argument("--optimize", default="val/quality", help="the optimised metric of the sweep")
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "mlflow-sweep-winner.png"))
    ap.add_argument(
        "--chromium",
        default=shutil.which("chromium") or "/usr/bin/chromium",
        help="browser executable ('' for Playwright's own)",
    )
    ap.add_argument("--timeout", type=float, default=90, help="seconds to wait for the run list")
    ap.add_argument("--keep", action="store_true", help="keep the sweep's store and print where")
    args = ap.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("ui_winner: needs Playwright: pip install -e '.[ui]' (it drives the system chromium)")
        return 2

    report = Report()
    store = Path(tempfile.mkdtemp(prefix="ui_winner."))
    t0 = time.monotonic()
    try:
        uri, link, metric = run_sweep(store, args.overrides, args.optimize)
        best = best_run_id(uri, link)
        with mlflow_ui(uri, free_port(), store / "mlflow-ui.log", 120) as base:
            url = link.replace("http://127.0.0.1:5000", base)
            print(f"mlflow ui on {base}; opening {url}", flush=True)
            with sync_playwright() as p:
                try:
                    browser = launch(p, args.chromium)
                except Exception as e:
                    raise CannotCheck(f"cannot start the browser {args.chromium!r}: {e}") from e
                try:
                    page = browser.new_context(viewport=VIEWPORT).new_page()
                    page.set_default_timeout(args.timeout * 1000)
                    page.goto(url)
                    page.wait_for_selector(ROWS)
                    page.wait_for_function(
                        f"() => document.querySelectorAll('{ROWS}').length >= 4 && "
                        "document.querySelector('.ag-header-cell[col-id^=\"metrics.\"]')"
                    )
                    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
                    if close.count():  # MLflow's assistant panel, open on a first visit
                        close.first.click(timeout=3000)
                    page.wait_for_timeout(1500)
                    check_page(page, metric, best, report)
                    page.mouse.move(1, 1)  # no hover tooltips in the picture
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.out)
                    print(f"  shot {args.out}", flush=True)
                finally:
                    browser.close()
    except CannotCheck as e:
        print(f"ui_winner: cannot check: {e}")
        return 2
    except KeyboardInterrupt:
        print("ui_winner: interrupted; mlflow ui stopped")
        return 130
    finally:
        if args.keep:
            print(f"the sweep's store: {store}")
        else:
            shutil.rmtree(store, ignore_errors=True)
    print(
        f"\nsummary ({time.monotonic() - t0:.0f} s): {len(report.notes)} ok, "
        f"{len(report.failures)} failures"
    )
    for line in report.notes + report.failures:
        print(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
