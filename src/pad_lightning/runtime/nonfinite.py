"""Stopping a run whose numbers stop being numbers: non-finite loss, gradients, weights or scores.

Every check raises `TrainingDiverged` with one line naming the step, what went non-finite and the
likely cause; the run stops as FAILED, and no checkpoint with non-finite weights is ever written
(`checkpointing.RollingCheckpoint` checks the weights first), so the last good one survives.
"""

from __future__ import annotations

import torch


def describe_nonfinite(what: str, tensor: torch.Tensor) -> str | None:
    """``'<what>: k of N are not finite (nan, +inf)'``, or None if every entry is finite."""
    t = tensor.detach()
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return None
    kinds = [
        name
        for name, hit in (("nan", t.isnan()), ("+inf", t.isposinf()), ("-inf", t.isneginf()))
        if bool(hit.any())
    ]
    return f"{what}: {int((~finite).sum())} of {t.numel()} are not finite ({', '.join(kinds)})"


def first_nonfinite(named: list[tuple[str, torch.Tensor | None]]) -> str | None:
    """Name of the first tensor with a non-finite entry (None entries are skipped). A sharded
    (DTensor) entry is checked on this rank's shard: the caller makes the ranks agree."""
    for name, tensor in named:
        if tensor is not None and hasattr(tensor, "to_local"):
            tensor = tensor.to_local()
        if tensor is not None and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def lr_hint(lr: float) -> str:
    return (
        f"the likely cause is a learning rate too high for this model (trainer.optim.lr={lr:g}); "
        "lower it, or keep trainer.gradient_clip_val set"
    )
