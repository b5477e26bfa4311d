"""Model folders and vLLM servers for the engine tests (served teacher, vLLM rollout engine).

The servers are real vLLM processes from the vLLM environment (`make vllm-env`, which `make
test` builds first): these tests never skip for want of one. Models are small Llamas on the toy
character tokenizer with attention heads of 32 (the smallest head size vLLM's CPU backend runs),
their weights scaled up so that next-token distributions are far from uniform.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from pad_lightning.engines import vllm_server
from pad_lightning.zoo.builder import ModelSpec, build_model
from pad_lightning.zoo.tokenizer import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
# The smoke preset's micro zoo with 32-wide heads (its own are 16 and 8 wide).
SMOKE_ZOO = [
    "experiment=smoke",
    "model.zoo.teacher.num_heads=1",
    "model.zoo.student.hidden_size=32",
    "model.zoo.student.num_heads=1",
]


def vllm_python() -> str:
    """The vLLM environment's python; the test fails (never skips) without one."""
    python = os.environ.get(vllm_server.PYTHON_ENV) or str(REPO / vllm_server.DEFAULT_PYTHON)
    if not Path(python).exists():
        pytest.fail(f"no vLLM environment at {python}: run `make vllm-env` (make test does)")
    return python


def scaled_model(tok, seed: int, scale: float = 3.0):
    model = build_model(SPEC, tok, seed=seed).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(scale)
    return model


def save_model_folder(folder: Path, seed: int, scale: float = 3.0) -> Path:
    tok = build_char_tokenizer()
    scaled_model(tok, seed, scale).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def start_server(folder: Path, name: str, log: Path, weight_sync: bool = False):
    return vllm_server.launch(
        str(folder),
        name,
        512,
        log,
        "test server",
        python=vllm_python(),
        weight_sync=weight_sync,
        say=lambda _: None,
    )


def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
