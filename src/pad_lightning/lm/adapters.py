"""LoRA (peft) students: telling a peft model apart and reaching the HF model inside it."""

from __future__ import annotations

import torch


def is_lora(model: torch.nn.Module) -> bool:
    """True for a peft model (the student with `lora.r` > 0)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model under a peft wrapper (the adapters stay active in it); others as they are."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
