"""The models of a run: the toy zoo when the config asks for it (built or found in its cache),
then both roles loaded by `lm.loading`; a served teacher is reached (or its server started) by
`serve_teacher`."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoConfig, GenerationConfig

from pad_lightning.engines import teacher_service, vllm_rollout, vllm_server
from pad_lightning.lm import loading
from pad_lightning.lm.adapters import is_lora
from pad_lightning.lm.chat import prompt_text
from pad_lightning.zoo.builder import ModelSpec, ZooConfig, ensure_zoo

ENGINE_NAME = "student"  # the name the rollout engine's server serves the student under
PROBE = "Which is the capital of France? Answer: Paris, 12 + 30 = 42."


def zoo_config(cfg) -> ZooConfig:
    """The ZooConfig dataclass from the `model.zoo` config node."""
    raw = dict(cfg)
    raw["tasks"] = list(raw["tasks"])
    raw["teacher"] = ModelSpec(**dict(raw["teacher"]))
    raw["student"] = ModelSpec(**dict(raw["student"]))
    return ZooConfig(**raw)


def serve_teacher(log_dir: Path | None, say=print):
    """`lm.loading.load_pair`'s `serve`: the teacher on its servers (`model.teacher.server.urls`),
    or on a vLLM server started here for the run (stopped by `vllm_server.stop_all` or at exit);
    checked to serve the teacher under the expected name with the teacher's tokenizer."""

    def serve(opts: loading.RoleOptions, source: str, tokenizer):
        server = opts.server
        name = server.model or source
        config = AutoConfig.from_pretrained(source, trust_remote_code=opts.trust_remote_code)
        if server.launches():
            vllm_server.check_head_size(config, "model.teacher")
            positions = getattr(config, "max_position_embeddings", None) or server.max_model_len
            started = vllm_server.launch(
                source,
                name,
                min(server.max_model_len, positions),
                Path(log_dir or ".") / "teacher-vllm.log",
                teacher_service.PREFIX,
                python=server.python,
                python_key=f"{teacher_service.PREFIX}.python",
                extra=server.args,
                say=say,
            )
            server = teacher_service.ServerOptions(**{**vars(server), "urls": [started.url]})
        served = teacher_service.connect(server, name, config)
        served.parameter_count = stored_parameters(source)
        try:
            served.generation_config = GenerationConfig.from_pretrained(source)
        except OSError:  # no generation_config.json: the tokenizer's EOS ends samples
            served.generation_config = None
        probe = prompt_text(tokenizer, PROBE) + " Paris."
        teacher_service.check_tokenizer(served, tokenizer, [PROBE, probe])
        return served

    return serve


def stored_parameters(source: str) -> int | None:
    """Parameters in a local model folder's safetensors files (headers only; tied weights are
    stored once), or None (a hub id, other weight formats)."""
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                total += math.prod(weights.get_slice(key).get_shape())
    return total


def load_pair(model_cfg, log_dir: Path | None = None) -> tuple:
    """(student, student_tokenizer, teacher, teacher_tokenizer) of `model_cfg`, building the toy
    zoo first when a role is a zoo entry (after both roles' options have been checked)."""
    return loading.load_pair(
        model_cfg,
        zoo_root=lambda: ensure_zoo(zoo_config(model_cfg.zoo)),
        serve=serve_teacher(log_dir),
    )


def rollout_engine(cfg, student, log_dir: Path, say=print):
    """rollout.sampler=vllm: the vLLM rollout engine for `student` (`engines.vllm_rollout`), on
    `rollout.vllm.url` or on a server started here from the student's folder (LoRA: its base
    model's); None for the other samplers."""
    if cfg.rollout.sampler != "vllm":
        return None
    options = vllm_rollout.VllmEngineOptions(
        **OmegaConf.to_container(cfg.rollout.vllm, resolve=True)
    )
    base = student.get_base_model() if is_lora(student) else student
    folder = str(base.config._name_or_path)
    url = options.url
    if url is None:
        vllm_server.check_head_size(base.config, "model.student (rollout.sampler=vllm)")
        positions = getattr(base.config, "max_position_embeddings", None) or options.max_model_len
        url = vllm_server.launch(
            folder,
            ENGINE_NAME,
            min(options.max_model_len, positions),
            Path(log_dir) / "rollout-vllm.log",
            vllm_rollout.PREFIX,
            python=options.python,
            python_key=f"{vllm_rollout.PREFIX}.python",
            weight_sync=True,
            extra=options.args,
            say=say,
        ).url
    return vllm_rollout.connect(options, url, ENGINE_NAME, base.generation_config)
