"""Mean +- std of before/after metrics over the runs of a (multi)run directory.

python experiments/aggregate.py multirun/2026-11-27/01-02-03 [more dirs...] [--metric exact_match]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pad_lightning.training.callbacks import PARTS


def load(dirs: list[str]) -> list[dict]:
    summaries = []
    for d in dirs:
        found = sorted(Path(d).glob("**/summary.json"))
        if not found:
            raise SystemExit(f"{d}: no summary.json below it (is it a pad_lightning.run output?)")
        summaries += [json.loads(p.read_text()) for p in found]
    return summaries


def fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 0 if abs(statistics.mean(values)) >= 1000 else 3
    return f"{statistics.mean(values):.{digits}f} +- {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--metric", action="append", default=None)
    args = parser.parse_args()
    summaries = load(args.dirs)
    metrics = args.metric or ["exact_match", "quality", "teacher_reward", "kendall_tau"]
    print(
        f"{len(summaries)} runs: "
        + "; ".join(" ".join(s["overrides"]) or "(defaults)" for s in summaries)
    )
    print("| metric | before | after | delta |")
    print("|---|---|---|---|")
    for m in metrics:
        cols = [fmt([s[side][m] for s in summaries]) for side in ("before", "after")]
        cols.append(fmt([s["after"][m] - s["before"][m] for s in summaries]))
        print(f"| {m} | " + " | ".join(cols) + " |")
    fit = [s["timings"]["fit_s"] for s in summaries]
    print(
        f"fit seconds: {fmt(fit)}; total seconds: "
        f"{fmt([s['timings']['total_s'] for s in summaries])}"
    )
    print("| per epoch | seconds | tokens/s |")
    print("|---|---|---|")
    for part in ("epoch", *PARTS):
        key = f"mean_{part}_s"
        if all(key in s["timings"] for s in summaries):
            rate = f"mean_{part}_tokens_per_s"
            tokens = (
                fmt([s["timings"][rate] for s in summaries])
                if all(rate in s["timings"] for s in summaries)
                else "-"
            )
            print(f"| {part} | {fmt([s['timings'][key] for s in summaries])} | {tokens} |")


if __name__ == "__main__":
    main()
