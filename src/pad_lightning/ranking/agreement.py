"""Agreement and rollout statistics (per prompt; NaN where undefined, e.g. all-tied rows)."""

from __future__ import annotations

import torch
from torchmetrics.functional import kendall_rank_corrcoef


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b between the rows of a and b, [P, n] -> [P]; NaN for constant rows."""
    if a.shape[0] == 0:
        return a.new_zeros(0)
    if a.shape[0] == 1:  # torchmetrics reads a single column as one 1-D output
        return kendall_tau(a.expand(2, -1), b.expand(2, -1))[:1]
    tau = kendall_rank_corrcoef(a.T.double(), b.T.double(), variant="b")
    return tau.reshape(-1).float()


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where the argmax of a is a maximiser of b (ties in b count as agreement), [P]."""
    best = a.argmax(-1, keepdim=True)
    return (b.gather(-1, best).squeeze(-1) >= b.max(-1).values).float()


def distinct_fraction(texts: list[list[str]]) -> torch.Tensor:
    """Share of distinct responses among each prompt's n samples, [P]."""
    return torch.tensor([len(set(group)) / len(group) for group in texts])


def nanmean(x: torch.Tensor) -> float:
    """Mean over defined entries; NaN if none are."""
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")
