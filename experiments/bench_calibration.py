"""Calibration modes on the toy world: teacher tokens per prompt and agreement with true quality.

For n = 4 and 8, the initial student samples n responses (T = 0.8) for held-out prompts; the
teacher scores them (r_T) and answers the MCQs of each calibration mode. Printed per mode:
teacher tokens processed per prompt and its ratio to the paper code's scheme (C(n, 2) pairwise
questions, one order each), seconds, and the mean per-prompt Kendall tau with the true quality q
of log p_sel alone and of the calibrated t = (1 - alpha) r_T + alpha log p_sel.

Run: ``.venv/bin/python experiments/bench_calibration.py [--prompts 128] [--alpha 0.8]
[hydra overrides, e.g. model.zoo.seed=1]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _setup import toy_setup

from pad_lightning.data.answers import quality_matrix
from pad_lightning.lm.chat import encode_pairs, pad_id
from pad_lightning.lm.generation import generate
from pad_lightning.lm.judge import selection_log_probs
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.ranking.agreement import kendall_tau, nanmean
from pad_lightning.ranking.selection import mix

MODES = [  # (label, mode, debias)
    ("pairwise, one order (paper code)", "pairwise", False),
    ("pairwise, both orders", "pairwise", True),
    ("listwise, one order", "listwise", False),
    ("listwise, n rotations", "listwise", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    b = toy_setup(args, args.prompts)
    cfg, student, tok_s, teacher, tok_t = b.cfg, b.student, b.tok_s, b.teacher, b.tok_t
    problems, sampling, dtype = b.problems, b.sampling, b.dtype
    prompts = [p.prompt for p in problems]
    print(
        f"toy world {list(cfg.data.tasks)}, {len(prompts)} held-out prompts, initial student "
        f"samples at T={sampling.temperature}, alpha={args.alpha}, threads "
        f"{torch.get_num_threads()}, inference dtype {cfg.trainer.inference_dtype}"
    )
    for n in args.ns:
        torch.manual_seed(0)
        gens = generate(student, tok_s, prompts, n, sampling, autocast_dtype=dtype)
        q = quality_matrix(gens.texts, problems)
        finished = (~gens.truncated).view(len(prompts), n).tolist()
        pairs = encode_pairs(tok_t, prompts, gens.texts, finished=finished)
        r_t = score_pairs(teacher, pairs, pad_id(tok_t), autocast_dtype=dtype).view(-1, n)
        distinct = sum(len(set(g)) for g in gens.texts) / (len(prompts) * n)
        print(
            f"\nn = {n}: sample quality {float(q.mean()):.3f}, distinct {distinct:.2f}; "
            f"tau(r_T, q) = {nanmean(kendall_tau(r_t, q)):+.3f} (uncalibrated teacher)"
        )
        header = (
            f"{'mode':<34} {'debiased':>8} {'tokens/prompt':>13} {'vs paper':>8} "
            f"{'seconds':>8} {'tau(p_sel,q)':>12} {'tau(t,q)':>9}"
        )
        print(header)
        reference = None
        for label, mode, debias in MODES:
            start = time.perf_counter()
            log_p_sel, tokens = selection_log_probs(
                teacher,
                tok_t,
                prompts,
                gens.texts,
                mode,
                debias,
                cfg.calibration.template,
                autocast_dtype=dtype,
            )
            seconds = time.perf_counter() - start
            reference = reference or tokens
            t = mix(r_t, log_p_sel, args.alpha)
            print(
                f"{label:<34} {'yes' if debias else 'no':>8} {tokens / len(prompts):13.0f} "
                f"{tokens / reference:7.2f}x {seconds:8.2f} "
                f"{nanmean(kendall_tau(log_p_sel, q)):+12.3f} {nanmean(kendall_tau(t, q)):+9.3f}"
            )


if __name__ == "__main__":
    main()
