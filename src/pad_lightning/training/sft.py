"""Supervised fine-tuning (token-level cross-entropy on response tokens) as a LightningModule.

Used by the toy zoo builder to train teacher and student; also the plain SFT baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import IterableDataset

from pad_lightning.lm.chat import EncodedPair, padded


def adamw_cosine(
    params,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.1,
) -> dict:
    """AdamW with linear warm-up and cosine decay, stepped per optimizer step: what
    `configure_optimizers` returns (the PAD module and the SFT module share it)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    sched = cosine_with_warmup(opt, warmup_steps, total_steps, min_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to `min_ratio` of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sft_batch(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids with labels only on the scored (response) span."""
    ids, attn = padded([p.ids for p in pairs], pad_id)
    labels = torch.full(ids.shape, -100, dtype=torch.long)
    for i, p in enumerate(pairs):
        labels[i, p.prompt_len : len(p.ids)] = ids[i, p.prompt_len : len(p.ids)]
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


class BatchStream(IterableDataset):
    """An endless stream of ready batches from `make_batch(step)` (deterministic per step)."""

    def __init__(self, make_batch: Callable[[int], dict[str, torch.Tensor]]):
        self.make_batch = make_batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step = 0
        while True:
            yield self.make_batch(step)
            step += 1


class SFTModule(L.LightningModule):
    """Cross-entropy on labelled tokens; AdamW with warm-up and cosine decay."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        total_steps: int,
        warmup_steps: int = 50,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.lr, self.total_steps = lr, total_steps
        self.warmup_steps, self.weight_decay = warmup_steps, weight_decay

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            batch["labels"][:, 1:].flatten(),
            ignore_index=-100,
        )
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_cosine(
            self.model.parameters(),
            self.lr,
            self.weight_decay,
            (0.9, 0.98),
            self.warmup_steps,
            self.total_steps,
        )
