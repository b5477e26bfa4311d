"""Compare the jobs of a sweep: mean +- std over seeds per setting of the other swept overrides.

    python -m pad_lightning.compare <sweep dir | MLflow parent run id>
        [--tracking-uri URI] [--metrics a,b,...] [--over seed]
        [--out PNG | --no-log] [--files-only]

A sweep dir is a Hydra multirun directory (`<dir>/<job>/summary.json`; a job that failed has
only `run_state.json`), a folder of such sweeps, or one run's directory. A parent run id names
the MLflow parent run of a multirun; its jobs are the child runs (tag `mlflow.parentRunId`),
"before" is each test/<m> metric's first value, "after" its last, "val" the last val/<m>.

Swept keys are the override keys whose values differ across jobs. The `--over` keys (default
`seed`) are replicates: rows group the jobs by the other swept keys, and each cell is the mean +-
sample std over the group (the value alone for a single run). Metrics: `m` (= after.m),
`after.m`, `before.m`, `delta.m`, `val.m`; default exact_match, quality, teacher_reward,
kendall_tau, delta.exact_match (those present); a name no job has is refused with the valid ones.
Rows are ranked by the first metric, best first (higher is better, lower for loss and
answer_truncated), and the best value of each metric column is marked (bold and `*`; the
`best` column of the CSV/JSON lists the metrics a row is best in; nothing is marked when all
rows tie). Prints the table, writes a bar chart of the first metric (`--out`, default
`<sweep dir>/compare.png` or `./compare-<parent id>.png`) with the table as .csv and .json
beside it, and logs the three to the parent run under `compare/` when there is one
(`--files-only`: not logged; `--no-log`: the table is printed and nothing is written or logged).
Exit status 2 with one line `compare: ...` for a target that is neither a sweep nor a run id, a
sweep without a finished job, or an unknown `--metrics` name.
"""

from __future__ import annotations

import sys

from pad_lightning.reporting.compare import main

if __name__ == "__main__":
    sys.exit(main())
