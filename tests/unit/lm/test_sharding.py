"""FSDP2 sharding of a tiny Llama on two gloo processes: `gathered` all-gathers once per FSDP
module for a whole decode (not per step), ranks that decode different numbers of steps do not
deadlock, the gathered weights are the full model's, and training after it reshards as before."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pad_lightning.lm.sharding import ShardingConfig, gathered, is_gathered, local_numel, shard

pytestmark = pytest.mark.slow


def _tiny(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as groups

        from pad_lightning.lm.sampling import decode

        full = _tiny()
        model = _tiny()
        shard(model, init_device_mesh("cpu", (2,)), ShardingConfig(), reshard=True)
        calls = {"n": 0}
        original = groups.foreach_all_gather

        def counted(*args, **kwargs):
            calls["n"] += 1
            return original(*args, **kwargs)

        groups.foreach_all_gather = counted
        prompt = torch.randint(3, 40, (3, 5), generator=torch.Generator().manual_seed(rank))
        mask = torch.ones_like(prompt)
        with gathered(model):
            entered = calls["n"]
            inside = is_gathered(model)
            # rank 0 decodes 3 steps, rank 1 decodes 9: no collective may run in between
            steps = 3 if rank == 0 else 9
            new = decode(model, prompt, mask, steps, stops=[], pad=0, greedy=True)
            during = calls["n"] - entered
        expected = decode(full.eval(), prompt, mask, steps, stops=[], pad=0, greedy=True)
        # training after the block: the usual per-forward all-gathers come back
        before = calls["n"]
        model(input_ids=prompt).logits.sum().backward()
        out[rank] = {
            "entered": entered,
            "inside": inside,
            "during": during,
            "same_tokens": torch.equal(new, expected),
            "steps": new.shape[1],
            "train_gathers": calls["n"] - before,
            "after": is_gathered(model),
            "local": local_numel(model),
            "total": sum(p.numel() for p in full.parameters()),
        }
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_decodes_without_per_step_collectives_and_without_deadlock():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    blocks_and_root = 3  # two decoder layers and the root module: one all-gather each
    for rank in (0, 1):
        r = out[rank]
        assert r["entered"] == blocks_and_root
        assert r["inside"] and not r["after"]
        assert r["during"] == 0  # 3 or 9 decoding steps, no all-gather
        assert r["same_tokens"]  # the gathered weights are the full model's
        assert r["train_gathers"] >= blocks_and_root  # sharded again: forward/backward gather
        assert abs(r["local"] - r["total"] / 2) <= 0.05 * r["total"]
    assert (out[0]["steps"], out[1]["steps"]) == (3, 9)
