"""Shared set-up of the benchmarks: the composed run config and the toy zoo models it names."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402

from pad_lightning.app.configs import config_dir  # noqa: E402


def run_config(overrides: list[str]):
    """The run config `python -m pad_lightning.run <overrides>` would use (no output dir)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, "output_dir=unused"])


def toy_setup(args, prompts: int):
    """Config, models, held-out toy problems and rollout sampling for a benchmark's arguments.

    `args.overrides` are Hydra overrides of the run config, `args.threads` torch's CPU threads.
    """
    import torch

    from pad_lightning.app.models import load_pair
    from pad_lightning.data.tasks import sample_problems
    from pad_lightning.lm.generation import SamplingConfig
    from pad_lightning.training.module import resolve_inference_dtype

    torch.set_num_threads(args.threads)
    cfg = run_config(args.overrides)
    student, tok_s, teacher, tok_t = load_pair(cfg.model)
    roll = cfg.rollout
    return SimpleNamespace(
        cfg=cfg,
        student=student.eval(),
        tok_s=tok_s,
        teacher=teacher.eval(),
        tok_t=tok_t,
        problems=sample_problems(list(cfg.data.tasks), "val", prompts, cfg.data.split_seed),
        sampling=SamplingConfig(roll.temperature, roll.top_p, roll.top_k, roll.max_new_tokens),
        dtype=resolve_inference_dtype(cfg.trainer.inference_dtype, "cpu"),
    )


def median_time(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`, after one warm-up call."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def padded_vocab(model, vocab: int, seed: int):
    """A copy of `model` whose vocabulary is padded to `vocab`: the added ids get small random
    embeddings (a little real probability mass, as unused tokens of a real model have; tied
    embeddings are one matrix)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    old = model.get_input_embeddings().weight.shape[0]
    if vocab > old:
        model.resize_token_embeddings(vocab, mean_resizing=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for weights in {
                model.get_input_embeddings().weight,
                model.get_output_embeddings().weight,
            }:
                weights[old:] = torch.randn(weights[old:].shape, generator=gen) * 0.02
    return model
