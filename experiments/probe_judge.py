"""Probe: does the toy teacher learn the MCQ judge prompt with more judge-only training?

Continues the cached default zoo teacher on judge batches (share `--mcq-fraction` of batches,
the rest answers) for `--rounds` x `--steps` steps at `--lr`, printing after each round the
pairwise judge accuracy (correct vs corrupted answer, both orders) and the answer exact match on
64 validation prompts. Measured (2026-11-27, judge-only, lr 1e-3): 50% -> 55% after 400 steps,
52% after 600, while answer exact match collapsed to 0%: the judge format, not the budget, is
the obstacle. The zoo cache is not modified.

Run: ``.venv/bin/python experiments/probe_judge.py [--steps 200] [--lr 1e-3] [--mcq-fraction 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from _setup import run_config
from transformers import AutoModelForCausalLM

from pad_lightning.app.models import zoo_config
from pad_lightning.data.tasks import sample_problems
from pad_lightning.zoo import builder as zoo
from pad_lightning.zoo.tokenizer import build_char_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mcq-fraction", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = zoo_config(run_config(args.overrides).model.zoo)
    root = zoo.ensure_zoo(cfg)
    tok = build_char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(root / "teacher")
    val = sample_problems(cfg.tasks, "val", cfg.eval_size, seed=cfg.seed)
    print(f"start: judge accuracy {zoo.judge_accuracy(model, tok, val, cfg):.3f}", flush=True)
    spec = dataclasses.replace(cfg.teacher, lr=args.lr, warmup_steps=20, eval_every=10**6)
    for k in range(1, args.rounds + 1):
        started = time.perf_counter()
        zoo._fit(cfg, spec, model, tok, "teacher", args.steps, args.mcq_fraction, 2.0, val)
        answers = zoo.answer_accuracy(model, tok, val[:64])
        print(
            f"after {k * args.steps} steps: judge accuracy "
            f"{zoo.judge_accuracy(model, tok, val, cfg):.3f}, answer exact match "
            f"{answers['exact_match']:.3f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
