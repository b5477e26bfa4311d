"""Accuracy and speed of the exact Plackett-Luce ranking law in float32 at large scores.

``ranking_log_probs`` before this change computed ``log P(tau) = sum_i s_i - sum_k LSE(R_k)``
from a table of subset log-sum-exps (scores shifted by their row maximum first): at |s| ~ 1e4 the
two sums are ~1e4-1e5 and cancel, so float32 rounding (ulp 1e-3 to 8e-3) lands in the log-prob of
the probable rankings and the law sums to 1 only within ~1e-2. Candidates, all float32 in and out:

* ``table (before)``: the old code (inlined below), row-max shift included;
* ``table, no shift``: the same without the row-max shift (what the shift alone buys);
* ``table, float64``: the old code on float64 scores, the result cast to float32;
* ``per-position, enumerated``: ``[B, n!, n]`` permuted scores, a masked log-sum-exp per position
  (the paper code's way; ``n * n!`` work);
* ``per-position, prefix tree (this)``: ``pad_lightning.ranking.plackett_luce.ranking_log_probs`` now: per
  position ``s_i - M(R) - L(R)`` from a ``[2**n, n]`` table (M = the subset's max, L = its
  log-sum-exp relative to M, in [0, log n]), summed down the prefix tree of the rankings.

Accuracy against a float64 enumeration (per-position, log space) of the same float32 scores
(``randn * scale``, batch ``--batch``, n = ``--n``): ``|sum p - 1|`` and the total variation
distance to the reference law (max over rows), and the largest log-prob error of a probable
ranking (reference p >= 1e-6). Speed: one PPD step (teacher law without grad, student law, JSD,
mean, backward) and the student law alone (forward + backward of a fixed random cotangent),
median of ``--repeats`` rounds run in turn (3 for a step slower than 1 s), ratio against
``table (before)``.

Run: ``.venv/bin/python experiments/bench_ranking_precision.py [--threads 2] [--batch 64] [--n 8]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable

import torch

from pad_lightning.ranking.plackett_luce import jsd, ranking_log_probs, subset_logsumexp

# ----------------------------------------------------------------- the code before the change


def _suffix_mask_levels(n: int) -> list[torch.Tensor]:
    """Per prefix length k = 0..n-1, the bitmask of the items not yet placed (lexicographic)."""
    full = (1 << n) - 1
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    levels = []
    for k in range(n):
        prefixes = perms[:: math.factorial(n - k), :k]  # one row per distinct prefix
        placed = (1 << prefixes).sum(dim=1) if k else torch.zeros(1, dtype=torch.long)
        levels.append(full ^ placed)
    return levels


class _TableLogProbs(torch.autograd.Function):
    """``out[b, tau] = s_sum[b] - sum_k table[b, suffix_k(tau)]`` (the old autograd Function)."""

    @staticmethod
    def forward(ctx, table, s_sum, levels):
        b = table.shape[0]
        acc = table.index_select(1, levels[0])
        for k in range(1, len(levels)):
            step = table.index_select(1, levels[k])
            step.view(b, acc.shape[1], -1).add_(acc.unsqueeze(-1))
            acc = step
        ctx.levels, ctx.table_shape = levels, table.shape
        return acc.neg_().add_(s_sum)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        levels, grad = ctx.levels, grad.contiguous()
        b = grad.shape[0]
        g_table = grad.new_zeros(ctx.table_shape)
        g_level = grad
        for k in range(len(levels) - 1, -1, -1):
            g_table.index_add_(1, levels[k], g_level)
            if k > 0:
                fan = g_level.shape[1] // levels[k - 1].numel()
                g_level = (g_level.view(-1, fan) @ grad.new_ones(fan)).view(b, -1)
        return g_table.neg_(), grad.sum(dim=-1, keepdim=True), None


_LEVELS: dict[int, list[torch.Tensor]] = {}


def table_log_probs(scores: torch.Tensor, shift: bool = True) -> torch.Tensor:
    n = scores.shape[-1]
    levels = _LEVELS.setdefault(n, _suffix_mask_levels(n))
    s = scores - scores.max(dim=-1, keepdim=True).values.detach() if shift else scores
    return _TableLogProbs.apply(subset_logsumexp(s), s.sum(dim=-1, keepdim=True), levels)


def table_float64(scores: torch.Tensor) -> torch.Tensor:
    return table_log_probs(scores.double()).to(scores.dtype)


_PERMS: dict[int, torch.Tensor] = {}


def enumerated_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """Per position: masked log-sum-exp over the not yet placed positions of ``[B, n!, n]``."""
    n = scores.shape[-1]
    perms = _PERMS.setdefault(
        n, torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    )
    permuted = scores[:, perms]
    positions = torch.arange(n)
    log_prob = torch.zeros(permuted.shape[:2], dtype=scores.dtype)
    for k in range(n - 1):
        remaining = permuted.masked_fill(positions < k, float("-inf"))
        log_prob = log_prob + permuted[..., k] - torch.logsumexp(remaining, dim=-1)
    return log_prob


VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "table (before)": table_log_probs,
    "table, no shift": lambda s: table_log_probs(s, shift=False),
    "table, float64": table_float64,
    "per-position, enumerated": enumerated_log_probs,
    "per-position, prefix tree (this)": ranking_log_probs,
}

# ------------------------------------------------------------------------------- measurement


def accuracy(fn, scores: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """max |sum p - 1|, max TV distance to the reference, max |log p error| where p_ref >= 1e-6."""
    with torch.no_grad():
        lp = fn(scores).double()
    p, p_ref = lp.exp(), reference.exp()
    sum_err = (p.sum(-1) - 1).abs().max().item()
    tv = (0.5 * (p - p_ref).abs().sum(-1)).max().item()
    probable = p_ref >= 1e-6
    log_err = (lp - reference).abs()[probable].max().item()
    return sum_err, tv, log_err


def time_median(
    steps: dict[str, Callable[[], None]], repeats: int, slow_s: float = 1.0
) -> dict[str, float]:
    """Median seconds per step; the steps run in turn each round (drift hits all alike).

    A step whose warm-up exceeds ``slow_s`` is timed in the first 3 rounds only.
    """
    slow = set()
    for name, step in steps.items():
        t0 = time.perf_counter()
        step()  # warm-up: caches, allocator
        if time.perf_counter() - t0 > slow_s:
            slow.add(name)
    runs: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats):
        for name, step in steps.items():
            if name in slow and round_ >= 3:
                continue
            t0 = time.perf_counter()
            step()
            runs[name].append(time.perf_counter() - t0)
    return {name: statistics.median(r) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scales", type=float, nargs="+", default=[10, 1e2, 1e3, 1e4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, n = args.batch, args.n
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, n {n}")
    print("float32 scores randn * scale; reference: float64 per-position enumeration\n")
    width = max(len(name) for name in VARIANTS)
    print(f"{'scale':>7}  {'variant':<{width}}  {'|sum p - 1|':>11}  {'TV':>9}  {'|dlog p|':>9}")
    for scale in args.scales:
        torch.manual_seed(0)
        scores = torch.randn(b, n) * scale
        reference = enumerated_log_probs(scores.double())
        for name, fn in VARIANTS.items():
            sum_err, tv, log_err = accuracy(fn, scores, reference)
            print(
                f"{scale:>7g}  {name:<{width}}  {sum_err:11.2e}  {tv:9.2e}  {log_err:9.2e}",
                flush=True,
            )
        print()

    torch.manual_seed(0)
    student = torch.randn(b, n, requires_grad=True)
    teacher = torch.randn(b, n)
    cotangent = torch.randn(b, math.factorial(n))

    def ppd_step(fn):
        def step():
            with torch.no_grad():
                log_t = fn(teacher)
            jsd(log_t, fn(student)).mean().backward()
            student.grad = None

        return step

    def law_step(fn):
        def step():
            fn(student).backward(cotangent)
            student.grad = None

        return step

    ppd = time_median({name: ppd_step(fn) for name, fn in VARIANTS.items()}, args.repeats)
    law = time_median({name: law_step(fn) for name, fn in VARIANTS.items()}, args.repeats)
    base_ppd, base_law = ppd["table (before)"], law["table (before)"]
    print(f"forward + backward, median of {args.repeats} (ms; ratio vs table (before))")
    print(f"{'variant':<{width}}  {'PPD step':>9}  {'ratio':>6}  {'law alone':>9}  {'ratio':>6}")
    for name in VARIANTS:
        print(
            f"{name:<{width}}  {ppd[name] * 1e3:9.2f}  {ppd[name] / base_ppd:5.2f}x  "
            f"{law[name] * 1e3:9.2f}  {law[name] / base_law:5.2f}x"
        )


if __name__ == "__main__":
    main()
