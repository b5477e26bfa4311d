"""Loading student and teacher: toy zoo entries, local HF folders or hub ids (safetensors only)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .toy.zoo import ModelSpec, ZooConfig, ensure_zoo

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}


def zoo_config(cfg) -> ZooConfig:
    """The ZooConfig dataclass from the `model.zoo` config node."""
    raw = dict(cfg)
    raw["tasks"] = list(raw["tasks"])
    raw["teacher"] = ModelSpec(**dict(raw["teacher"]))
    raw["student"] = ModelSpec(**dict(raw["student"]))
    return ZooConfig(**raw)


def resolve_path(role_cfg, zoo_root: Path | None) -> str:
    """Where a role's weights live: an explicit `path` (folder or hub id) or a zoo entry."""
    if role_cfg.get("path"):
        return str(role_cfg.path)
    if zoo_root is None:
        raise ValueError("model.<role>.zoo is set but model.zoo is missing")
    return str(zoo_root / role_cfg.zoo)


def load(
    path: str, dtype: str = "float32", chat_template: str | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer; weights from safetensors only."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], use_safetensors=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_pair(model_cfg) -> tuple:
    """(student, student_tokenizer, teacher, teacher_tokenizer), building the zoo if needed."""
    uses_zoo = any(not model_cfg[r].get("path") for r in ("student", "teacher"))
    zoo_root = ensure_zoo(zoo_config(model_cfg.zoo)) if uses_zoo else None
    loaded = []
    for role in ("student", "teacher"):
        role_cfg = model_cfg[role]
        loaded.extend(
            load(
                resolve_path(role_cfg, zoo_root),
                role_cfg.get("dtype", "float32"),
                role_cfg.get("chat_template"),
            )
        )
    return tuple(loaded)
