"""The `trainer` group (conf/trainer/): the Lightning Trainer, and under `optim` the optimizer
and its schedule (`training.module.OptimConfig`, which owns their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pad_lightning.app.schema.values import is_number, number, one_of, require
from pad_lightning.training.module import OptimConfig

INFERENCE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class TrainerGroup:
    """conf/trainer/default.yaml explains each key."""

    max_epochs: int = 150
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    precision: str | int = "32-true"
    inference_dtype: str = "auto"
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    val_every_n_epochs: int = 50
    checkpoint_every_n_epochs: int = 1
    num_threads: int | None = None  # null: torch's default
    optim: OptimConfig = field(default_factory=OptimConfig)

    def check(self) -> None:
        """Each key's type and range, the optimizer's included."""
        number(self.num_nodes, "trainer.num_nodes", integer=True, low=1)
        number(self.max_epochs, "trainer.max_epochs", integer=True, low=1)
        number(self.accumulate_grad_batches, "trainer.accumulate_grad_batches", integer=True, low=1)
        number(self.val_every_n_epochs, "trainer.val_every_n_epochs", integer=True, low=1)
        number(
            self.checkpoint_every_n_epochs, "trainer.checkpoint_every_n_epochs", integer=True, low=1
        )
        number(self.gradient_clip_val, "trainer.gradient_clip_val", low=0, low_open=True, null=True)
        number(self.num_threads, "trainer.num_threads", integer=True, low=1, null=True)
        one_of(self.inference_dtype, "trainer.inference_dtype", INFERENCE_DTYPES)
        opt = self.optim
        number(opt.lr, "trainer.optim.lr", low=0, low_open=True)
        number(opt.weight_decay, "trainer.optim.weight_decay", low=0)
        number(opt.warmup_steps, "trainer.optim.warmup_steps", integer=True, low=0)
        number(opt.min_lr_ratio, "trainer.optim.min_lr_ratio", low=0, high=1)
        betas = opt.betas
        require(
            isinstance(betas, list | tuple)
            and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas),
            f"trainer.optim.betas={list(betas) if isinstance(betas, list | tuple) else betas!r}: "
            "must be two "
            "numbers in [0, 1)",
        )
