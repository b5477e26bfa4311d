"""The `strategy` group: one process, DDP, or FSDP2 sharding of the student.

`strategy=fsdp` runs on Lightning's `ModelParallelStrategy` (a data-parallel mesh over every
rank) with PyTorch FSDP2: `PADModule.configure_model` calls `shard`, which applies `fully_shard`
to each transformer block (the model's `_no_split_modules`) and then to the whole model.

* Generation and the other no-grad passes of a rollout or an evaluation run inside `gathered`:
  the weights are all-gathered once, every decoding step uses them, and they are resharded at
  the end. No collective runs per decoding step, so ranks that finish at different lengths (or
  make a different number of scoring batches) cannot deadlock.
* The teacher is `replicated` (a full frozen copy on every rank, as under DDP) or `sharded`
  (stored sharded, gathered for each rollout): the second saves its memory outside rollouts.
* Checkpoints are distributed checkpoints (a directory per epoch, one shard file per rank);
  `FSDPStrategy` saves and loads the student's shards only, never the frozen teacher, writes
  the directory under a `.partial` name and renames it when every rank has finished.
* The final student is consolidated (`full_state_dict`) and saved as one ordinary HF folder.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from .interrupts import fault

STRATEGIES = ("auto", "ddp", "fsdp")
TEACHER_PLACEMENTS = ("replicated", "sharded")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
META = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


@dataclass
class ShardingConfig:
    """`strategy=fsdp`'s options (conf/strategy/fsdp.yaml explains each)."""

    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    cpu_offload: bool = False
    teacher: str = "replicated"


def strategy_name(cfg) -> str:
    """`strategy.name`; configs saved before the group existed kept it in `trainer.strategy`."""
    if cfg.get("strategy") is not None:
        return cfg.strategy.name
    return cfg.trainer.get("strategy", "auto")


def sharding_config(cfg) -> ShardingConfig | None:
    if strategy_name(cfg) != "fsdp":
        return None
    keys = ShardingConfig.__dataclass_fields__
    return ShardingConfig(**{k: v for k, v in cfg.strategy.items() if k in keys})


def trainer_strategy(cfg):
    """What `L.Trainer(strategy=...)` gets."""
    return FSDPStrategy() if strategy_name(cfg) == "fsdp" else strategy_name(cfg)


# -- sharding -------------------------------------------------------------------------------
def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF model (its `_no_split_modules` classes)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard(model: torch.nn.Module, mesh, cfg: ShardingConfig, reshard: bool) -> None:
    """`fully_shard` every block of `model`, then the model itself (in place).

    Blocks reshard after forward when `reshard` (full sharding, ZeRO-3); with False they keep
    their gathered weights until backward (gradients and optimizer states sharded, ZeRO-2). The
    root (embeddings, final norm, LM head) keeps its weights until backward in both cases, as
    FSDP2 does by default: backward needs them first."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh}
    if cfg.param_dtype or cfg.reduce_dtype:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=DTYPES.get(cfg.param_dtype), reduce_dtype=DTYPES.get(cfg.reduce_dtype)
        )
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            f"strategy=fsdp: {type(model).__name__} names no transformer block class "
            "(_no_split_modules); use strategy=ddp"
        )
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard, **kwargs)
        block._pad_reshard = reshard
    fully_shard(model, reshard_after_forward=False, **kwargs)
    model._pad_reshard = False


def is_sharded(model: torch.nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_gathered(model: torch.nn.Module) -> bool:
    """Whether a sharded model's weights are gathered now (inside `gathered`)."""
    return bool(getattr(model, "_pad_gathered", False))


@contextmanager
def gathered(*models: torch.nn.Module | None):
    """Hold the full weights of the sharded `models` for the duration of the block.

    One all-gather per FSDP module on entry (every rank must enter together), none in between,
    a reshard on exit. Models that are not sharded are left alone; nested use is a no-op."""
    from torch.distributed.fsdp import FSDPModule

    roots = [m for m in models if is_sharded(m) and not is_gathered(m)]
    if not roots:
        yield
        return
    fsdp = [m for root in roots for m in root.modules() if isinstance(m, FSDPModule)]
    for module in fsdp:
        module.set_reshard_after_forward(False, recurse=False)
    for module in fsdp:
        module.unshard()
    for root in roots:
        root._pad_gathered = True
    try:
        yield
    finally:
        for root in roots:
            root._pad_gathered = False
        for module in fsdp:
            module.reshard()
            module.set_reshard_after_forward(module._pad_reshard, recurse=False)


def local_numel(model: torch.nn.Module) -> int:
    """Parameters this rank stores (its shards of sharded ones, all of the others)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict | None:
    """The consolidated state dict of a sharded model on rank 0 (a collective: every rank calls
    it; the others get an empty dict); None for a model that is not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def unwrapped_class(model: torch.nn.Module) -> type:
    """The model's own class: FSDP2 swaps it for a generated `FSDP<Name>` subclass."""
    cls = type(model)
    return cls.__mro__[2] if is_sharded(model) else cls


# -- checkpoints ----------------------------------------------------------------------------
def is_distributed_checkpoint(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


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

        from .checkpointing import CheckpointError

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
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: cannot load the student's shards ({first})") from None
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
