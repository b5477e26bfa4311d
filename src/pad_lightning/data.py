"""Prompt sources for a run: train pool, validation and test problems."""

from __future__ import annotations

from .toy.tasks import Problem, sample_problems


def build_problems(cfg) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """(train pool, validation, test) for the `data` config node."""
    if cfg.name != "toy":
        raise ValueError(f"data.name={cfg.name!r}: valid: toy")
    tasks = list(cfg.tasks)
    return (
        sample_problems(tasks, "train", cfg.train_size, cfg.split_seed),
        sample_problems(tasks, "val", cfg.val_size, cfg.split_seed),
        sample_problems(tasks, "test", cfg.test_size, cfg.split_seed),
    )
