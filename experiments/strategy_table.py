"""Time and memory per rank of the jobs of a strategy sweep, from their summary.json files.

    python -m pad_lightning.run --multirun experiment=smoke trainer.accelerator=cpu \
        trainer.devices=2 strategy=ddp,fsdp strategy.reshard_after_forward=true,false
    python experiments/strategy_table.py multirun/<date>/<time>

One row per job: strategy, reshard_after_forward, teacher placement, fit and total seconds,
mean epoch seconds, peak resident memory of each rank (CUDA peak too on GPUs) and the student
and teacher parameters each rank stores (FSDP), as a Markdown table (what the README shows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def rows(sweep: Path) -> list[dict]:
    out = []
    for summary_file in sorted(sweep.glob("*/summary.json"), key=lambda p: int(p.parent.name)):
        summary = json.loads(summary_file.read_text())
        config = yaml.safe_load((summary_file.parent / "config.yaml").read_text())
        strategy = config.get("strategy") or {"name": config["trainer"].get("strategy", "auto")}
        times = summary["timings"]
        ranks = summary.get("ranks", 1)
        memory = [times.get(f"memory/peak_rss_mb/rank{r}") for r in range(ranks)]
        if ranks == 1:
            memory = [times.get("memory/peak_rss_mb")]
        cuda = [times.get(f"memory/peak_cuda_mb/rank{r}") for r in range(ranks)]
        params = summary.get("params_per_rank") or {}
        out.append(
            {
                "job": summary_file.parent.name,
                "strategy": strategy["name"],
                "reshard": strategy.get("reshard_after_forward"),
                "teacher": strategy.get("teacher", "replicated"),
                "fit_s": times["fit_s"],
                "total_s": times["total_s"],
                "epoch_s": times.get("mean_epoch_s"),
                "rss_mb": memory,
                "cuda_mb": cuda if any(c is not None for c in cuda) else None,
                "student_params": params.get("student"),
                "teacher_params": params.get("teacher"),
            }
        )
    return out


def _per_rank(values) -> str:
    if not values or all(v is None for v in values):
        return "-"
    return " / ".join(f"{v:,.0f}" for v in values)


def markdown(table: list[dict]) -> str:
    head = (
        "| job | strategy | reshard_after_forward | teacher | fit s | total s | epoch s "
        "| peak RSS MB per rank | peak CUDA MB per rank | student params per rank "
        "| teacher params per rank |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in table:
        reshard = r["reshard"] if r["strategy"] == "fsdp" else "(ignored)"
        teacher = r["teacher"] if r["strategy"] == "fsdp" else "replicated"
        lines.append(
            f"| {r['job']} | {r['strategy']} | {reshard} | {teacher} | {r['fit_s']:.1f} "
            f"| {r['total_s']:.1f} | {r['epoch_s'] or 0:.2f} | {_per_rank(r['rss_mb'])} "
            f"| {_per_rank(r['cuda_mb'])} | {_per_rank(r['student_params'])} "
            f"| {_per_rank(r['teacher_params'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a --multirun directory (hydra.sweep.dir)")
    args = parser.parse_args()
    table = rows(args.sweep)
    if not table:
        sys.exit(f"{args.sweep}: no job summary.json (a finished --multirun directory)")
    print(markdown(table))


if __name__ == "__main__":
    main()
