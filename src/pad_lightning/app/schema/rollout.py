"""The `rollout` group (conf/rollout/): on-policy sampling and the rollout schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

from pad_lightning.app.schema.values import number, one_of, require
from pad_lightning.engines.vllm_rollout import VllmEngineOptions
from pad_lightning.engines.vllm_server import vllm_python
from pad_lightning.lm.sampling import SAMPLERS

ROLLOUT_SAMPLERS = (*SAMPLERS, "vllm")


@dataclass
class RolloutGroup:
    """conf/rollout/default.yaml explains each key."""

    prompts_per_epoch: int = 64
    batch_size: int = 64  # prompts per forward/backward pass
    every_n_epochs: int = 1  # 0: generate once
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    sampler: str = SAMPLERS[0]
    max_new_tokens: int = 16
    generation_batch_size: int = 256
    max_tokens: int = 16384  # padded tokens per teacher/student scoring pass
    sample_log_prompts: int = 8
    vllm: VllmEngineOptions = field(default_factory=VllmEngineOptions)

    def check(self) -> None:
        """Each key's type and range."""
        number(self.temperature, "rollout.temperature", low=0, low_open=True)
        number(self.top_p, "rollout.top_p", low=0, high=1, low_open=True)
        number(self.top_k, "rollout.top_k", integer=True, low=0, note=" (0 disables)")
        one_of(self.sampler, "rollout.sampler", ROLLOUT_SAMPLERS)
        engine = self.vllm
        if engine.url is not None:
            require(
                isinstance(engine.url, str) and engine.url.startswith(("http://", "https://")),
                f"rollout.vllm.url={engine.url!r}: a base URL like http://127.0.0.1:8001, or null "
                "(the run starts a server)",
            )
        elif self.sampler == "vllm":  # the vLLM the run would start exists
            vllm_python(engine.python, "rollout.vllm.python")
        number(engine.max_model_len, "rollout.vllm.max_model_len", integer=True, low=16)
        number(engine.concurrency, "rollout.vllm.concurrency", integer=True, low=1)
        number(engine.timeout, "rollout.vllm.timeout", low=0, low_open=True)
        number(engine.retries, "rollout.vllm.retries", integer=True, low=0)
        for key in (
            "max_new_tokens",
            "prompts_per_epoch",
            "batch_size",
            "generation_batch_size",
            "max_tokens",
            "sample_log_prompts",
        ):
            number(getattr(self, key), f"rollout.{key}", integer=True, low=1)
        number(
            self.every_n_epochs, "rollout.every_n_epochs", integer=True, low=0, note=" (0 = once)"
        )
