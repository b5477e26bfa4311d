"""End-to-end epoch time of the default run: this tree against an earlier commit, and n = 4 vs 8.

Runs ``python -m pad_lightning.run trainer.max_epochs=E <overrides>`` for each case, one after
the other on this machine (never in parallel: two jobs on 2 cores slow each other 2x), for the
working tree and for a git ref checked out in a temporary worktree (same venv, its own ``src``
and ``conf``), and prints seconds per epoch (fit time / epochs) with the per-part means from each
run's summary.json. Rollout parts the old code did not time separately show as "-".

Run: ``.venv/bin/python experiments/bench_epoch.py [--ref c719095] [--epochs 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pad_lightning.training.callbacks import PARTS

REPO = Path(__file__).resolve().parents[1]
CHECK_OFF = "calibration.check.refuse=false"  # a key the ref commit does not know
CASES = [  # (label, tree, overrides)
    ("n=4 (default)", "ref", []),
    ("n=4 (default)", "this", []),
    ("n=8", "this", ["n=8"]),
    ("n=8 calibration.alpha=0.8", "ref", ["n=8", "calibration.alpha=0.8"]),
    # the default world's judge is at chance: this tree refuses it at start-up unless told
    ("n=8 calibration.alpha=0.8", "this", ["n=8", "calibration.alpha=0.8", CHECK_OFF]),
]


def run_case(tree: Path, overrides: list[str], epochs: int, workdir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1")
    env["HF_DATASETS_OFFLINE"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        # the tree's own configs: pkg://pad_lightning.conf would find this venv's editable install
        f"--config-path={tree / 'conf'}",
        f"trainer.max_epochs={epochs}",
        f"logger.tracking_uri=sqlite:///{workdir}/mlflow.db",
        "logger.log_student=false",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    return json.loads(summary_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="c719095", help="the 'before' commit (issue 2's last)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.ref],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"ref": before, "this": REPO}
            print(f"{args.epochs} epochs per case; 'ref' = {args.ref}, 'this' = working tree")
            print(
                f"{'case':<28} {'tree':<5} {'s/epoch':>8} " + " ".join(f"{p[:9]:>9}" for p in PARTS)
            )
            for case, (label, tree, overrides) in enumerate(CASES):
                workdir = tmp / f"case{case}"  # no '=' in paths: they go into Hydra overrides
                workdir.mkdir()
                summary = run_case(trees[tree], overrides, args.epochs, workdir)
                t = summary["timings"]
                per_epoch = t["fit_s"] / t["epochs"]
                cells = [
                    f"{t[f'mean_{p}_s']:9.3f}" if f"mean_{p}_s" in t else f"{'-':>9}" for p in PARTS
                ]
                name = tree if tree == "this" else args.ref[:7]
                print(f"{label:<28} {name:<5} {per_epoch:8.3f} " + " ".join(cells), flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)],
                capture_output=True,
            )


if __name__ == "__main__":
    main()
