"""The inference autocast of no-grad passes (generation, scoring, the judge, teacher logits)."""

from __future__ import annotations

import torch


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`'s type; a no-op context when `dtype` is None
    (float32 weights stay float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
