"""The `model` group (conf/model/): each role's options are `lm.loading.role_options`' (the
group's schema per role); the toy zoo's keys are `zoo.builder.ZooConfig`'s and `ModelSpec`'s."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from pad_lightning.app.schema.nodes import key_names, refuse_unknown
from pad_lightning.app.schema.values import require, writable_dir_problem
from pad_lightning.lm.loading import ROLES, check_model_config, role_options
from pad_lightning.zoo.builder import ModelSpec, ZooConfig

MODEL_KEYS = (*ROLES, "zoo")


def lora_rank(model: DictConfig) -> int:
    """The student's LoRA rank (0: off), as `lm.loading.role_options` reads it."""
    return role_options("student", model.student if "student" in model else None).lora.r


def check_model(model: DictConfig) -> None:
    """The group's keys, the toy zoo (its keys and cache folder) and both roles' options and
    sources (`lm.loading.check_model_config`: nothing is loaded)."""
    require(model is not None, "model: missing; use model=toy or model=hf")
    refuse_unknown("model", model.keys(), MODEL_KEYS)
    if "zoo" in model:
        zoo = model.zoo
        require(
            "cache_dir" in zoo and "student" in zoo,
            "model.zoo: set (e.g. by experiment=smoke, which shrinks the toy zoo) but this model "
            "config has no toy zoo; use model=toy with that experiment, or drop it",
        )
        refuse_unknown("model.zoo", zoo.keys(), key_names(ZooConfig))
        for role in ROLES:
            if role in zoo:
                refuse_unknown(f"model.zoo.{role}", zoo[role].keys(), key_names(ModelSpec))
        cache = Path(os.path.expanduser(str(zoo.cache_dir)))
        require(
            writable_dir_problem(cache) is None,
            f"model.zoo.cache_dir={str(cache)!r}: not writable; set model.zoo.cache_dir "
            "or PAD_LIGHTNING_CACHE to a writable directory",
        )
    check_model_config(model)
