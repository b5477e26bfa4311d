"""Memory over a long calibrated run: resident memory after each epoch, and each epoch's own peak,
with PyTorch's two oneDNN caches at several capacities.

Runs the default toy world with MCQ calibration and a learning rate too small to change the
student (so every epoch does the same work on fresh samples), one case after the other (never in
parallel), each in its own process with the caches' capacities set, `LRU_CACHE_CAPACITY` (ideep's
computations) and `ONEDNN_PRIMITIVE_CACHE_CAPACITY` (oneDNN's primitives): a case `L/P` sets
them to L and P, `torch` leaves both at PyTorch's defaults (1024 each), `run` leaves them to the
run (`runtime.memory.bound_compute_cache`). It prints per case: the resident memory after
epoch 1 and after the last epoch, its least-squares slope over the epochs after the first tenth
(MB per epoch), the mean of the per-epoch peaks in the first and last quarter (and in each fifth
of the run), and the mean epoch seconds, with each case's seconds as a ratio to the first case's
(measured in this run).

Run: ``.venv/bin/python experiments/bench_memory.py [--epochs 60] [--cases torch,run,64/0]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "calibration.alpha=0.8",
    "calibration.check.refuse=false",  # the default world's judge is at chance: run anyway
    "trainer.optim.lr=1e-12",  # the student does not change: the same work every epoch
    "trainer.val_every_n_epochs=1000",
    "logger.print_time_every=0",
    "logger.log_rollouts_every=0",
    "logger.log_student=false",
]
RSS = "system/memory/rss_after_epoch_mb"
PEAK = "system/memory/epoch_peak_rss_mb"


def slope(values: list[float]) -> float:
    """Least-squares slope of `values` against their index."""
    n = len(values)
    mx, my = (n - 1) / 2, sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    return num / sum((i - mx) ** 2 for i in range(n))


def series(tracking_uri: str, key: str) -> list[float]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs(client.get_experiment_by_name("pad-lightning").experiment_id)
    history = client.get_metric_history(runs[0].info.run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


CACHES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def case_env(case: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for name in CACHES:
        env.pop(name, None)
    if case == "torch":
        env.update({name: "1024" for name in CACHES})
    elif case != "run":
        env.update(zip(CACHES, case.split("/"), strict=True))
    return env


def run_case(case: str, epochs: int, workdir: Path) -> dict:
    env = case_env(case)
    uri = f"sqlite:///{workdir}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        *OVERRIDES,
        f"trainer.max_epochs={epochs}",
        f"logger.tracking_uri={uri}",
        f"hydra.run.dir={workdir / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_memory: case {case} failed:\n" + proc.stderr[-3000:])
    import json

    summary = json.loads((workdir / "run" / "summary.json").read_text())
    rss, peak = series(uri, RSS), series(uri, PEAK)
    start, quarter = max(1, epochs // 10), max(1, epochs // 4)
    return {
        "rss_first": rss[0],
        "rss_last": rss[-1],
        "rss_slope": slope(rss[start:]),
        "peak_first": sum(peak[1 : 1 + quarter]) / quarter,  # epoch 1's peak includes loading
        "peak_last": sum(peak[-quarter:]) / quarter,
        "peak_fifths": [
            sum(part) / len(part)
            for part in (peak[i * epochs // 5 : (i + 1) * epochs // 5] for i in range(5))
        ],
        "epoch_s": summary["timings"]["fit_s"] / epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--cases", default="torch,run")
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((case, run_case(case, args.epochs, Path(tmp))))
            print(f"case {case}: done", flush=True)
    base = rows[0][1]["epoch_s"]
    print(f"\n{args.epochs} epochs, default world, calibration.alpha=0.8, lr 1e-12")
    print(
        "| caches (ideep / oneDNN) | RSS after epoch 1 | after last | slope (MB/epoch) "
        "| epoch peak, 1st quarter | last quarter | s/epoch | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, r in rows:
        print(
            f"| {case} | {r['rss_first']:.0f} MB "
            f"| {r['rss_last']:.0f} MB | {r['rss_slope']:+.2f} | {r['peak_first']:.0f} MB "
            f"| {r['peak_last']:.0f} MB | {r['epoch_s']:.2f} | {r['epoch_s'] / base:.2f} |"
        )
    print("\nmean epoch peak (MB) in each fifth of the run:")
    for case, r in rows:
        print(f"  {case}: " + " / ".join(f"{v:.0f}" for v in r["peak_fifths"]))


if __name__ == "__main__":
    main()
