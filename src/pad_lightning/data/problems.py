"""Prompt sources for a run: train pool, validation and test problems.

`data=toy` builds the embedded toy world (problems with references); `data=jsonl|parquet|csv|
ultrafeedback` reads prompt datasets (see `prompts.py`), whose problems have no reference, so
reference-based metrics are skipped for them.
"""

from __future__ import annotations

from pad_lightning.data.prompts import check_data, load_prompts
from pad_lightning.data.tasks import sample_problems
from pad_lightning.runtime.errors import DataError


def build_problems(cfg, tokenizer=None, log=print) -> tuple[list, list, list]:
    """(train pool, validation, test) for the `data` config node.

    `tokenizer` (the student's) is needed only for `data.max_prompt_tokens`; `log` receives the
    per-source filter counts and split sizes of prompt datasets, one line each.
    """
    if cfg.name == "toy":
        check_data(cfg)
        tasks = list(cfg.tasks)
        return (
            sample_problems(tasks, "train", cfg.train_size, cfg.split_seed),
            sample_problems(tasks, "val", cfg.val_size, cfg.split_seed),
            sample_problems(tasks, "test", cfg.test_size, cfg.split_seed),
        )
    splits = load_prompts(cfg, tokenizer)
    for line in splits.summary():
        log(line)
    return splits.train, splits.val, splits.test


__all__ = ["DataError", "build_problems", "check_data"]
