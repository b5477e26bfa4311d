"""The `strategy` group (conf/strategy/): one process, DDP or FSDP2; its FSDP keys are
`lm.sharding.ShardingConfig`'s (which owns their defaults), present in every option so that one
sweep can cross them with strategy=ddp,fsdp."""

from __future__ import annotations

from dataclasses import dataclass

from pad_lightning.app.schema.values import flag, one_of, require
from pad_lightning.lm.sharding import DTYPES, ShardingConfig
from pad_lightning.training.strategy import STRATEGIES, TEACHER_PLACEMENTS


@dataclass
class StrategyGroup(ShardingConfig):
    """`name`: auto | ddp | fsdp; the rest is read by strategy=fsdp only."""

    name: str = "auto"

    def check(self, accelerator: str, lora_rank) -> None:
        """Own keys; FSDP with what it cannot run with (host offload on CPU, a LoRA student)."""
        one_of(self.name, "strategy.name", STRATEGIES)
        for key in ("reshard_after_forward", "cpu_offload"):
            flag(getattr(self, key), f"strategy.{key}")
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            require(
                value is None or value in DTYPES,
                f"strategy.{key}={value!r}: valid: null, {', '.join(DTYPES)}",
            )
        one_of(self.teacher, "strategy.teacher", TEACHER_PLACEMENTS)
        if self.name != "fsdp":
            return
        require(
            not (self.cpu_offload and accelerator == "cpu"),
            "strategy.cpu_offload=true: offloads GPU shards to host memory; with "
            "trainer.accelerator=cpu they are already there: drop it",
        )
        require(
            not lora_rank,
            "strategy=fsdp: a LoRA student (model.student.lora) is not supported yet; use "
            "strategy=ddp (LoRA students are small enough to replicate)",
        )
