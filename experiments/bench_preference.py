"""Benchmark exact Plackett-Luce ranking distributions + JSD (PPD loss), forward and backward.

Compares ``pad_lightning.ranking.plackett_luce`` (subset log-sum-exp table + prefix tree, fused JSD) with a
straightforward reference written the way the paper's public code does it: enumerate all rankings
with itertools into a ``[B, n!, n]`` tensor of permuted scores, accumulate position by position
the log-softmax over the remaining (masked) positions, then the JSD. Also times the subset-DP
Plackett-Luce KL (``pl_kl``) at n = 12, 14, 16.

Run: ``.venv/bin/python experiments/bench_preference.py [--threads 2] [--batch 64]``.

Memory columns: peak of torch's live CPU tensor allocations during one forward+backward, from the
allocator events of ``torch.profiler(profile_memory=True)`` (not process RSS). Timings: median of
3 runs after a (profiled) warm-up, or a single run where the warm-up exceeds 3 s. The reference is
skipped where its time, extrapolated from the previous n (cost ~ n * n!), would exceed
``--ref-limit-s`` (30 s). The reference's permutation tensor is built outside the timed region.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable

import torch

from pad_lightning.ranking.plackett_luce import jsd, pl_kl, ranking_log_probs

# ---------------------------------------------------------------------------------- reference


def reference_log_probs(scores: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Enumerated PL log-probs: ``[B, n!, n]`` permuted scores, masked LSE position by position."""
    n = scores.shape[-1]
    permuted = scores[:, perms]  # [B, n!, n]
    positions = torch.arange(n, device=scores.device)
    log_prob = torch.zeros(permuted.shape[:2], dtype=scores.dtype, device=scores.device)
    for k in range(n):
        remaining = permuted.masked_fill(positions < k, float("-inf"))
        log_prob = log_prob + permuted[..., k] - torch.logsumexp(remaining, dim=-1)
    return log_prob


def reference_jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Plain per-row JSD with probabilities."""
    p, q = logp.exp(), logq.exp()
    log_m = torch.log((p + q) / 2)
    return 0.5 * (p * (logp - log_m)).sum(-1) + 0.5 * (q * (logq - log_m)).sum(-1)


def reference_step(student: torch.Tensor, teacher: torch.Tensor, perms: torch.Tensor) -> None:
    with torch.no_grad():
        log_t = reference_log_probs(teacher, perms)
    loss = reference_jsd(log_t, reference_log_probs(student, perms)).mean()
    loss.backward()


def ours_step(student: torch.Tensor, teacher: torch.Tensor) -> None:
    with torch.no_grad():
        log_t = ranking_log_probs(teacher)
    loss = jsd(log_t, ranking_log_probs(student)).mean()
    loss.backward()


def pl_kl_step(student: torch.Tensor, teacher: torch.Tensor) -> None:
    (pl_kl(teacher, student) + pl_kl(student, teacher)).mean().backward()


# ------------------------------------------------------------------------------------ timing


def peak_alloc_mb(fn: Callable[[], None]) -> float:
    """Peak of torch's live CPU allocations (MB) made while running ``fn`` once.

    Replays the allocator's alloc/free events recorded by ``torch.profiler(profile_memory=True)``
    and returns the maximum of their running sum (tensors alive before ``fn`` are not counted).
    """
    with torch.profiler.profile(profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def measure(fn: Callable[[], None], repeats: int = 3, slow_s: float = 3.0) -> tuple[float, float]:
    """``(median seconds, peak MB)``: a profiled warm-up gives the memory, then timed repeats."""
    t0 = time.perf_counter()
    mem = peak_alloc_mb(fn)
    if time.perf_counter() - t0 > slow_s:
        repeats = 1
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-n", type=int, default=10)
    parser.add_argument("--ref-limit-s", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, float32")
    print("exact ranking distribution + JSD, forward + backward (teacher side without grad)")
    print(
        f"{'n':>3} {'n!':>9} {'ref s':>9} {'ours s':>9} {'speed-up':>9} "
        f"{'ref peak MB':>12} {'ours peak MB':>13}"
    )
    t_start = time.perf_counter()
    ref_prev: tuple[int, float] | None = None
    for n in range(2, args.max_n + 1):
        student = torch.randn(b, n, requires_grad=True)
        teacher = torch.randn(b, n)
        ours, ours_mem = measure(lambda s=student, t=teacher: ours_step(s, t))
        predicted = 0.0 if ref_prev is None else ref_prev[1] * n * n / ref_prev[0]
        if predicted > args.ref_limit_s:
            ref_txt, ratio_txt, ref_mem_txt = "skipped", "-", "-"
        else:
            perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
            ref, ref_mem = measure(lambda s=student, t=teacher, p=perms: reference_step(s, t, p))
            ref_prev = (n, ref)
            ref_txt, ratio_txt, ref_mem_txt = f"{ref:.4f}", f"{ref / ours:.1f}x", f"{ref_mem:.1f}"
            del perms
        print(
            f"{n:>3} {math.factorial(n):>9} {ref_txt:>9} {ours:9.4f} {ratio_txt:>9} "
            f"{ref_mem_txt:>12} {ours_mem:13.1f}",
            flush=True,
        )
    print()
    print("pl_kl subset DP: forward KL + reverse KL, forward + backward")
    print(f"{'n':>3} {'seconds':>9} {'peak MB':>9}")
    for n in (12, 14, 16):
        student = torch.randn(b, n, requires_grad=True)
        teacher = torch.randn(b, n)
        secs, mem = measure(lambda s=student, t=teacher: pl_kl_step(s, t))
        print(f"{n:>3} {secs:9.4f} {mem:9.1f}", flush=True)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
