"""FSDP2 sharding of one model (the Lightning strategy that uses it is `training.strategy`).

`shard` applies `fully_shard` to each transformer block (the model's `_no_split_modules`) and
then to the whole model; `PADModule.configure_model` calls it under `strategy=fsdp`.

* Generation and the other no-grad passes of a rollout or an evaluation run inside `gathered`:
  the weights are all-gathered once, every decoding step uses them, and they are resharded at
  the end. No collective runs per decoding step, so ranks that finish at different lengths (or
  make a different number of scoring batches) cannot deadlock.
* The teacher is `replicated` (a full frozen copy on every rank, as under DDP) or `sharded`
  (stored sharded, gathered for each rollout): the second saves its memory outside rollouts.
* The final student is consolidated (`full_state_dict`) and saved as one ordinary HF folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShardingConfig:
    """`strategy=fsdp`'s options (conf/strategy/fsdp.yaml explains each)."""

    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    cpu_offload: bool = False
    teacher: str = "replicated"


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
