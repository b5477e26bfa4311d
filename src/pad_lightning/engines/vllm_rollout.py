"""The vLLM rollout engine (`rollout.sampler=vllm`): the student's on-policy samples come from a
vLLM server that holds the student's current weights.

Why a server next to the training process, not vLLM inside it: vLLM pins its own versions of
torch and transformers (the CPU build pins transformers < 5.20), so it lives in its own
environment, as it does in most training stacks; a server is also what a multi-GPU setup runs
(the engine on its own GPUs). Before every rollout round the student's weights (LoRA adapters
merged) are written as one safetensors file to a folder the server reads (in /dev/shm where it
exists), and the server is asked to pause, reload them in place (`pad_vllm_worker.WeightReload`,
a worker extension), drop its prefix cache (cached keys and values of the old weights would
otherwise be reused) and resume. The samples then come from `ServedLM.sample_ids` with the run's
temperature, top-p, top-k, maximum length and stop tokens.

This path moves weights through a file, so the server must see the training process's disk
(the same machine, or a shared filesystem). Across machines, vLLM's NCCL weight-transfer routes
(CUDA only) are the way; they are not driven here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from pad_lightning.engines.openai_api import Client, ClientOptions
from pad_lightning.engines.served import ServedLM
from pad_lightning.runtime.errors import ServiceError

PREFIX = "rollout.vllm"


@dataclass
class VllmEngineOptions:
    """`rollout.vllm`: conf/rollout/default.yaml explains each key."""

    url: str | None = None  # a server started with weight sync; None: the run starts one
    python: str | None = None
    max_model_len: int = 2048
    args: list[str] = field(default_factory=list)
    concurrency: int = 16
    timeout: float = 300.0
    retries: int = 3


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without later names of a storage already listed (tied weights: the output
    head is the embedding), each tensor contiguous, on the CPU, detached."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


class RolloutEngine:
    """A weight-synced vLLM server of the student (see the module docstring)."""

    def __init__(self, served: ServedLM, sync_dir: Path | None = None):
        self.served = served
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.sync_dir = Path(sync_dir or tempfile.mkdtemp(prefix="pad-vllm-weights-", dir=base))
        self.synced_step: int | None = None
        self.sync_seconds: list[float] = []

    def _rpc(self, path: str, body: dict | None = None) -> dict:
        return self.served.client.request(path, body if body is not None else {})

    def sync(self, state: dict[str, torch.Tensor], step: int | None = None) -> float:
        """Load `state` into the server (skipped when `step` is the step already loaded);
        returns the seconds it took."""
        if step is not None and step == self.synced_step:
            return 0.0
        started = time.perf_counter()
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.sync_dir / "model.safetensors.tmp"
        save_file(unique_tensors(state), str(tmp))
        os.replace(tmp, self.sync_dir / "model.safetensors")
        self._rpc("/pause?mode=wait")
        try:
            answer = self._rpc(
                "/collective_rpc",
                {"method": "pad_reload_weights", "args": [str(self.sync_dir)]},
            )
            results = answer.get("results") if isinstance(answer, dict) else None
            if not results or any(r != "ok" for r in results):
                raise ServiceError(
                    f"{PREFIX}: the server did not reload the weights (answer {answer!r:.200}); "
                    "start it with the weight-sync worker extension (python -m "
                    "pad_lightning.serve --weight-sync)"
                )
            self._rpc("/reset_prefix_cache")
        finally:
            self._rpc("/resume")
        self.synced_step = step
        seconds = time.perf_counter() - started
        self.sync_seconds.append(seconds)
        return seconds

    def close(self) -> None:
        for f in self.sync_dir.glob("model.safetensors*"):
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.sync_dir.rmdir()


def connect(options: VllmEngineOptions, url: str, name: str, generation_config) -> RolloutEngine:
    """The engine on `url` serving `name`, checked to answer with the weight-sync routes."""
    client = Client(
        ClientOptions(
            urls=[url],
            timeout=options.timeout,
            retries=options.retries,
            concurrency=options.concurrency,
        ),
        PREFIX,
    )
    try:
        models = client.request("/v1/models", retries=0).get("data") or []
    except ServiceError as err:
        raise ServiceError(f"{PREFIX}.url: {url} does not answer ({err})") from None
    served = {m.get("id"): m for m in models if isinstance(m, dict)}
    if name not in served:
        raise ServiceError(
            f"{PREFIX}.url: {url} serves {', '.join(map(repr, served))}, not {name!r}; start it "
            f"with --served-model-name {name}"
        )
    try:
        client.request("/is_paused", retries=0)
    except ServiceError:
        raise ServiceError(
            f"{PREFIX}.url: {url} has no weight-sync routes; start it with "
            "python -m pad_lightning.serve --weight-sync (VLLM_SERVER_DEV_MODE=1 and the "
            "pad_vllm_worker extension)"
        ) from None
    limit = served[name].get("max_model_len")
    lm = ServedLM(client, name, limit if isinstance(limit, int) else None)
    lm.generation_config = generation_config
    return RolloutEngine(lm)
