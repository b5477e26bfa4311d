"""Shared set-up of the benchmarks: the composed run config and the toy zoo models it names."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def run_config(overrides: list[str]):
    """The run config `python -m pad_lightning.run <overrides>` would use (no output dir)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, "output_dir=unused"])


def load_models(cfg):
    """(student, student tokenizer, teacher, teacher tokenizer), building the zoo if needed."""
    from pad_lightning.models import load_pair

    student, tok_s, teacher, tok_t = load_pair(cfg.model)
    return student.eval(), tok_s, teacher.eval(), tok_t
