"""The models of a run: the toy zoo when the config asks for it (built or found in its cache),
then both roles loaded by `lm.loading`."""

from __future__ import annotations

from pad_lightning.lm import loading
from pad_lightning.zoo.builder import ModelSpec, ZooConfig, ensure_zoo


def zoo_config(cfg) -> ZooConfig:
    """The ZooConfig dataclass from the `model.zoo` config node."""
    raw = dict(cfg)
    raw["tasks"] = list(raw["tasks"])
    raw["teacher"] = ModelSpec(**dict(raw["teacher"]))
    raw["student"] = ModelSpec(**dict(raw["student"]))
    return ZooConfig(**raw)


def load_pair(model_cfg) -> tuple:
    """(student, student_tokenizer, teacher, teacher_tokenizer) of `model_cfg`, building the toy
    zoo first when a role is a zoo entry (after both roles' options have been checked)."""
    return loading.load_pair(model_cfg, zoo_root=lambda: ensure_zoo(zoo_config(model_cfg.zoo)))
