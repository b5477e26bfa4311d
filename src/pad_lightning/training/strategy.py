"""The `strategy` group in Lightning: one process, DDP, or FSDP2 (`FSDPStrategy`).

`strategy=fsdp` runs on Lightning's `ModelParallelStrategy` over a data-parallel mesh of every
rank; the model-level sharding is `lm.sharding`. Checkpoints are distributed checkpoints (a
directory per epoch, one shard file per rank): `FSDPStrategy` saves and loads the student's
shards only, never the frozen teacher, writes the directory under a `.partial` name and renames
it when every rank has finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from pad_lightning.lm.sharding import ShardingConfig
from pad_lightning.runtime.interrupts import fault
from pad_lightning.training.checkpoints import META, is_distributed_checkpoint

STRATEGIES = ("auto", "ddp", "fsdp")


TEACHER_PLACEMENTS = ("replicated", "sharded")


def strategy_name(cfg) -> str:
    """`strategy.name` of a checked run config (a config saved before the group existed, with
    `trainer.strategy`, is upgraded when it is resumed: app.schema.moved)."""
    return cfg.strategy.name


def sharding_config(cfg) -> ShardingConfig | None:
    if strategy_name(cfg) != "fsdp":
        return None
    keys = ShardingConfig.__dataclass_fields__
    return ShardingConfig(**{k: v for k, v in cfg.strategy.items() if k in keys})


def trainer_strategy(cfg):
    """What `L.Trainer(strategy=...)` gets."""
    return FSDPStrategy() if strategy_name(cfg) == "fsdp" else strategy_name(cfg)


class FSDPStrategy(ModelParallelStrategy):
    """ModelParallelStrategy over a data-parallel mesh of all ranks, whose checkpoints hold the
    student (sharded) and the optimizer state, not the frozen teacher; written atomically."""

    def __init__(self) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1)

    def setup_environment(self) -> None:
        # every rank is a data-parallel rank (the base class's "auto" is one per node)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=False, cpu_offload=True)
        student = get_model_state_dict(self.lightning_module.student, options=options)
        return {f"student.{k}": v for k, v in student.items()}

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(path.name + ".partial")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)
        self.barrier("pad_checkpoint_start")
        super().save_checkpoint(checkpoint, partial, storage_options)
        fault("checkpoint_write")  # tests: a crash after the write, before the rename
        self.barrier("pad_checkpoint_written")
        if self.global_rank == 0:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            os.replace(partial, path)
        self.barrier("pad_checkpoint_renamed")

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_distributed_checkpoint(path):  # a single-file checkpoint (another strategy)
            return super().load_checkpoint(path, weights_only=weights_only)
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from pad_lightning.runtime.errors import CheckpointError, first_line

        module = self.lightning_module
        frozen = module._frozen_student_keys()
        student = {
            f"student.{k}": v
            for k, v in get_model_state_dict(module.student).items()
            if f"student.{k}" not in frozen
        }
        state = {"state_dict": student}
        try:
            load(state, checkpoint_id=path)
        except Exception as err:  # a checkpoint of another student: missing or mis-shaped keys
            raise CheckpointError(
                f"{path}: cannot load the student's shards ({first_line(err)})"
            ) from None
        set_model_state_dict(
            module.student,
            {k[len("student.") :]: v for k, v in state["state_dict"].items()},
            options=StateDictOptions(strict=False),
        )
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(
                self.model,
                optimizer,
                optim_state_dict=optim_state[key],
                options=StateDictOptions(cpu_offload=True),
            )
        meta = torch.load(path / META, weights_only=weights_only)
        meta["state_dict"] = state["state_dict"]  # what on_load_checkpoint checks
        return meta
