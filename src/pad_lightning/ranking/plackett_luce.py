"""Plackett-Luce ranking distributions and divergences between them (pure torch).

Scores ``s [B, n]`` define, per row, a Plackett-Luce (PL) distribution over the ``n!`` rankings
``tau`` of ``n`` items (best first)::

    P(tau | s) = prod_k exp(s_tau(k)) / sum_{m >= k} exp(s_tau(m))

Everything here is vectorised over the batch, differentiable, and device/dtype agnostic. Inputs in
half precision are computed (and returned) in float32; float64 stays float64.

Two families of algorithms:

* exact enumeration of all ``n!`` rankings (``ranking_log_probs``), built from a table of the
  per-position factors ``log p(i first among R)`` over the subsets ``R`` and a prefix tree over the
  rankings, ``O(B * n!)`` time and memory; used for the JSD-based PPD loss (``n <= MAX_EXACT_N``);
* dynamic programmes over the ``2**n`` subsets of already-placed items (``pl_kl``,
  ``ranking_entropy``), ``O(B * n * 2**n)``, which never enumerate rankings and work to n ~ 16.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "MAX_EXACT_N",
    "group",
    "jsd",
    "kl",
    "permutations",
    "pl_kl",
    "plackett_luce_log_prob",
    "ranking_entropy",
    "ranking_log_probs",
    "subset_logsumexp",
    "subset_max_logsumexp",
]

MAX_EXACT_N = 10
"""Largest ``n`` for which the ``n!`` ranking distribution is enumerated."""

MAX_DP_N = 20
"""Largest ``n`` accepted by the subset dynamic programmes (``2**n`` table per row)."""

# Elements (batch rows x DP edges) processed per chunk by the subset DP; bigger batches are split
# and, under autograd, checkpointed chunk by chunk so that peak memory stays bounded.
_DP_CHUNK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64, anything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_float(x: Tensor) -> Tensor:
    return x.to(_compute_dtype(x))


def _check_scores(scores: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, n], got {tuple(scores.shape)}")
    if scores.shape[-1] < 1:
        raise ValueError("scores must have at least one item (n >= 1)")


def _device_key(device: torch.device | str | None) -> torch.device:
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _normal_tensors(fn):
    """Build cached index tensors as normal tensors even when first called in inference mode.

    A tensor created under ``torch.inference_mode`` (Lightning's test loop) and cached would
    later break autograd in training ("Inference tensors cannot be saved for backward").
    """

    def wrapper(*args):
        with torch.inference_mode(False):
            return fn(*args)

    return wrapper


def _expand_prefixes(n: int, keep_items: bool):
    """Yield, level by level (k = 0..n), the prefixes of length k of all rankings of n items.

    Prefixes come in itertools.permutations (lexicographic) order, so the children of a prefix are
    contiguous and appear in increasing order of the appended item. Yields ``(items, masks)`` with
    ``items [P_k, k]`` (or None when ``keep_items`` is False) and ``masks [P_k]`` the bitmask of
    the prefix's item set.
    """
    items = torch.zeros(1, 0, dtype=torch.long)
    masks = torch.zeros(1, dtype=torch.long)
    remaining = torch.arange(n, dtype=torch.long).unsqueeze(0)
    yield (items if keep_items else None), masks
    for k in range(n):
        r = n - k
        child = remaining.reshape(-1)  # [P_k * r]
        masks = masks.repeat_interleave(r) | (1 << child)
        if keep_items:
            items = torch.cat([items.repeat_interleave(r, dim=0), child.unsqueeze(1)], dim=1)
        if r > 1:
            drop = torch.tensor(
                [[c for c in range(r) if c != j] for j in range(r)], dtype=torch.long
            )  # [r, r-1]: remaining columns after taking column j
            remaining = remaining[:, drop].reshape(-1, r - 1)
        else:
            remaining = remaining.new_zeros(remaining.shape[0], 0)
        yield (items if keep_items else None), masks


@lru_cache(maxsize=32)
@_normal_tensors
def _permutations_cached(n: int, device: torch.device) -> Tensor:
    items, _ = deque(_expand_prefixes(n, keep_items=True), maxlen=1)[0]
    return items.to(device)


def permutations(n: int, device: torch.device | str | None = None) -> Tensor:
    """All rankings of ``n`` items, ``LongTensor [n!, n]`` in ``itertools.permutations`` order.

    Cached per ``(n, device)``: treat the result as read-only.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > MAX_EXACT_N:
        raise ValueError(f"n = {n} > MAX_EXACT_N = {MAX_EXACT_N}: n! rankings is too many")
    return _permutations_cached(n, _device_key(device))


@lru_cache(maxsize=32)
@_normal_tensors
def _edge_levels(n: int, device: torch.device) -> tuple[Tensor, ...]:
    """Per placement step k = 0..n-2, one entry per ranking prefix of length k + 1 (lexicographic
    order): the index ``R * n + i`` of its last step in a ``[2**n, n]`` table, where ``R`` is the
    bitmask of the items not placed before step k and ``i`` the item placed at step k.

    The children of prefix ``p`` of length k are entries ``p*(n-k) ... p*(n-k) + n-k-1`` of step
    k. The last step (one item left, probability 1) is omitted.
    """
    full = (1 << n) - 1
    item_of_bit = torch.zeros(1 << n, dtype=torch.long)
    item_of_bit[1 << torch.arange(n)] = torch.arange(n)
    levels = []
    parent = None
    for k, (_, masks) in enumerate(_expand_prefixes(n, keep_items=False)):
        if k == n:
            break
        if parent is not None:
            before = parent.repeat_interleave(masks.numel() // parent.numel())
            levels.append(((full ^ before) * n + item_of_bit[masks ^ before]).to(device))
        parent = masks
    return tuple(levels)


# --------------------------------------------------------------------------------------------
# exact enumeration
# --------------------------------------------------------------------------------------------


def subset_logsumexp(scores: Tensor) -> Tensor:
    """Log-sum-exp of ``scores [B, n]`` over every subset of the n items: ``[B, 2**n]``.

    Column ``mask`` holds ``logsumexp_{i in mask} s_i`` (bit i set = item i in the subset); the
    empty set (column 0) is ``-inf``. Built by bit-doubling, ``O(B * 2**n)``, differentiable.
    """
    _check_scores(scores)
    s = _as_float(scores)
    table = s.new_full((s.shape[0], 1), float("-inf"))
    for j in range(s.shape[1]):
        # subsets whose highest item is j: (subsets of items < j) + {j}
        table = torch.cat([table, torch.logaddexp(table, s[:, j : j + 1])], dim=1)
    return table


def subset_max_logsumexp(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Every subset's maximum and log-sum-exp relative to it: ``(M, L)``, each ``[B, 2**n]``.

    ``M[:, mask] = max_{i in mask} s_i`` (detached: exact input values) and ``L[:, mask] =
    log sum_{i in mask} exp(s_i - M)`` in ``[0, log n]``, so ``M + L`` is the subset's log-sum-exp
    without the rounding of a large sum: ``s_i - M`` is a difference of inputs, exact when it
    matters (close scores), and ``L`` is small. The empty set is ``(-inf, -inf)``. Built by
    bit-doubling like :func:`subset_logsumexp`; only ``L`` carries gradients.
    """
    _check_scores(scores)
    s = _as_float(scores)
    sd = s.detach()
    m = sd.new_full((s.shape[0], 1), float("-inf"))
    lse = s.new_full((s.shape[0], 1), float("-inf"))
    for j in range(s.shape[1]):
        # subsets whose highest item is j: (subsets of items < j) + {j}
        m_new = torch.maximum(m, sd[:, j : j + 1])
        l_new = torch.logaddexp(lse + (m - m_new), s[:, j : j + 1] - m_new)
        m, lse = torch.cat([m, m_new], dim=1), torch.cat([lse, l_new], dim=1)
    return m, lse


def ranking_log_probs(scores: Tensor) -> Tensor:
    """Exact Plackett-Luce log-probabilities of all ``n!`` rankings: ``[B, n!]``.

    Columns follow :func:`permutations` order. Uses the per-position form ``log P(tau) =
    sum_k [s_tau(k) - LSE(items not placed before step k)]``: each factor is read from a
    ``[2**n, n]`` table of ``s_i - M(R) - L(R)`` (see :func:`subset_max_logsumexp`), so a
    probable ranking's factors stay exact to float rounding of numbers of order 1 however large
    the scores (a float32 law sums to 1 within ~1e-6 at |s| ~ 1e4), and the factors are summed
    down the prefix tree of the rankings: ``n - 1`` table look-ups per ranking and row, peak memory
    ``O(B * n!)``. Raises ``ValueError`` if ``n > MAX_EXACT_N``.
    """
    _check_scores(scores)
    b, n = scores.shape
    if n > MAX_EXACT_N:
        raise ValueError(
            f"ranking_log_probs enumerates n! rankings and supports n <= MAX_EXACT_N = "
            f"{MAX_EXACT_N}, got n = {n}; decompose into smaller groups (see group())"
        )
    s = _as_float(scores)
    if n == 1:
        return s - s  # one ranking, probability 1 (kept in the graph)
    m, lse = subset_max_logsumexp(s)  # [B, 2**n] each
    # factor[b, R, i] = log p(i first among R) = s_i - M(R) - L(R); entries with i not in R unused
    factor = (s.unsqueeze(1) - m.unsqueeze(2)) - lse.unsqueeze(2)
    levels = _edge_levels(n, _device_key(s.device))
    return _PrefixTreeSum.apply(factor.reshape(b, -1), levels)


class _PrefixTreeSum(torch.autograd.Function):
    """``out[b, tau] = sum_k values[b, edge_k(tau)]`` accumulated down the ranking prefix tree.

    ``levels[k]`` indexes ``values`` for every prefix of length k + 1; the children of a prefix
    are contiguous. A hand-written backward (scatter-add per tree level, children summed by a
    mat-vec) with in-place forward accumulation keeps the number of ``[B, n!]`` temporaries to a
    minimum: on CPU each fresh large tensor costs page faults comparable to the arithmetic.
    """

    @staticmethod
    def forward(ctx, values: Tensor, levels: tuple[Tensor, ...]) -> Tensor:
        b = values.shape[0]
        acc = values.index_select(1, levels[0])  # [B, n]: the first step
        for k in range(1, len(levels)):
            step = values.index_select(1, levels[k])
            step.view(b, acc.shape[1], -1).add_(acc.unsqueeze(-1))
            acc = step
        ctx.levels = levels
        ctx.values_shape = values.shape
        return acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        levels = ctx.levels
        grad = grad.contiguous()
        b = grad.shape[0]
        g_values = grad.new_zeros(ctx.values_shape)
        g_level = grad
        for k in range(len(levels) - 1, -1, -1):
            g_values.index_add_(1, levels[k], g_level)
            if k > 0:  # sum the gradient of each prefix's children (contiguous)
                fan = g_level.shape[1] // levels[k - 1].numel()
                ones = grad.new_ones(fan)
                g_level = (g_level.view(-1, fan) @ ones).view(b, -1)
        return g_values, None


def plackett_luce_log_prob(scores: Tensor, rankings: Tensor) -> Tensor:
    """Plackett-Luce log-probability ``[B]`` of ``rankings [B, n]`` (item indices, best first)."""
    _check_scores(scores)
    s = _as_float(scores).gather(1, rankings.long())
    tail_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # LSE over positions >= k
    return (s - tail_lse).sum(dim=-1)


def _neg_inf_to_finite(logp: Tensor) -> Tensor:
    """Replace ``-inf`` by a huge finite negative so 0 * log 0 terms stay 0 (value and grad)."""
    if logp.numel() == 0 or bool(logp.amin() > float("-inf")):
        return logp
    return logp.clamp_min(torch.finfo(logp.dtype).min / 4)


class _JSD(torch.autograd.Function):
    """Fused JSD over rows of finite log-probabilities; ``d JSD / d logp = p log(p/m) / 2``."""

    @staticmethod
    def forward(ctx, lp: Tensor, lq: Tensor) -> Tensor:
        logm = torch.logaddexp(lp, lq).sub_(math.log(2.0))
        t_p = torch.sub(lp, logm)
        e = torch.exp(lp)
        t_p.mul_(e)  # p * log(p / m)
        torch.exp(lq, out=e)
        t_q = logm.neg_().add_(lq).mul_(e)  # q * log(q / m), reusing logm's storage
        del e
        out = (t_p.sum(dim=-1) + t_q.sum(dim=-1)).mul_(0.5)
        ctx.save_for_backward(
            t_p if ctx.needs_input_grad[0] else None, t_q if ctx.needs_input_grad[1] else None
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        t_p, t_q = ctx.saved_tensors
        half = (0.5 * grad).unsqueeze(-1)
        g_p = None if t_p is None else t_p * half
        g_q = None if t_q is None else t_q * half
        return g_p, g_q


def jsd(logp: Tensor, logq: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats) per row between log-distributions ``[B, K]``: ``[B]``.

    ``JSD = 1/2 KL(P||M) + 1/2 KL(Q||M)``, ``M = (P+Q)/2`` formed in log space. Entries with zero
    (or underflowed) probability contribute 0; the result is clamped to ``[0, ln 2]``.
    """
    if logp.shape != logq.shape:
        raise ValueError(f"shape mismatch: {tuple(logp.shape)} vs {tuple(logq.shape)}")
    dtype = torch.promote_types(_compute_dtype(logp), _compute_dtype(logq))
    lp = _neg_inf_to_finite(logp.to(dtype)).contiguous()
    lq = _neg_inf_to_finite(logq.to(dtype)).contiguous()
    return _JSD.apply(lp, lq).clamp(0.0, math.log(2.0))


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(P || Q)`` per row between log-distributions ``[B, K]``: ``[B]``.

    ``0 * log 0 = 0``; where ``Q`` is exactly 0 but ``P`` is not, the result is huge but finite.
    """
    dtype = torch.promote_types(_compute_dtype(logp), _compute_dtype(logq))
    lp = _neg_inf_to_finite(logp.to(dtype))
    lq = _neg_inf_to_finite(logq.to(dtype))
    return (lp.exp() * (lp - lq)).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# subset dynamic programmes (no enumeration of rankings)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
@_normal_tensors
def _dp_layers(n: int, device: torch.device) -> tuple[tuple[Tensor, Tensor, Tensor], ...]:
    """Popcount layers of the subset lattice, for the DP over sets of already-placed items.

    For each layer m = 1..n-1 returns ``(comp_prev, pred, items)``:
    ``comp_prev [L_{m-1}]`` bitmasks of the complements of the layer m-1 sets (the items still to
    be placed), ``pred [L_m * m]`` index (within layer m-1) of ``S \\ {i}`` for every set S of
    layer m and every i in S, and ``items [L_m * m]`` that i. Sets are in increasing mask order.
    """
    full = (1 << n) - 1
    masks = torch.arange(1 << n, dtype=torch.long)
    bits = (masks.unsqueeze(1) >> torch.arange(n)).bitwise_and(1)  # [2**n, n]
    popcount = bits.sum(dim=1)
    pos = torch.empty(1 << n, dtype=torch.long)
    layer_masks = []
    for m in range(n + 1):
        lm = masks[popcount == m]
        pos[lm] = torch.arange(lm.numel())
        layer_masks.append(lm)
    out = []
    for m in range(1, n):
        lm = layer_masks[m]
        items = bits[lm].nonzero()[:, 1].view(-1, m)  # [L_m, m], members in increasing order
        pred = pos[lm.unsqueeze(1) ^ (1 << items)]  # [L_m, m]
        comp_prev = full ^ layer_masks[m - 1]
        out.append(
            (comp_prev.to(device), pred.reshape(-1).to(device), items.reshape(-1).to(device))
        )
    return tuple(out)


def _pl_dp(s_p: Tensor, s_q: Tensor | None) -> Tensor:
    """Sum over all DP edges of ``reach_P(S) p(i|C) * (log p(i|C) - log q(i|C))``; ``C=comp(S)``.

    With ``s_q=None`` the bracket is ``-log p(i|C)``, i.e. the entropy of PL(s_p). Edges into the
    full set (one item left, probability 1) contribute 0 and are skipped.
    """
    b, n = s_p.shape
    out = s_p.new_zeros(b)
    if n < 2:
        return out
    tp = subset_logsumexp(s_p)
    tq = None if s_q is None else subset_logsumexp(s_q)
    diff_s = None if s_q is None else s_p - s_q
    log_reach = s_p.new_zeros(b, 1)  # layer 0: the empty set, reached with probability 1
    for m, (comp_prev, pred, items) in enumerate(_dp_layers(n, _device_key(s_p.device)), 1):
        lz_p = tp.index_select(1, comp_prev)  # [B, L_{m-1}]: LSE of the items still to place
        # edge (S \ {i}) -> S: log p(i | comp(S \ {i})) and its log weight with the reach prob
        log_cond = s_p.index_select(1, items) - lz_p.index_select(1, pred)  # [B, L_m * m]
        lw = log_reach.index_select(1, pred) + log_cond
        w = lw.exp()
        if s_q is None:
            out = out - (w * log_cond).sum(dim=-1)
        else:
            lz_d = lz_p - tq.index_select(1, comp_prev)
            bracket = diff_s.index_select(1, items) - lz_d.index_select(1, pred)
            out = out + (w * bracket).sum(dim=-1)
        log_reach = torch.logsumexp(lw.view(b, -1, m), dim=-1)  # [B, L_m]
    return out


def _pl_dp_batched(s_p: Tensor, s_q: Tensor | None) -> Tensor:
    """Run :func:`_pl_dp` in batch chunks (checkpointed under autograd) to bound peak memory."""
    b, n = s_p.shape
    if n > MAX_DP_N:
        raise ValueError(f"subset DP supports n <= MAX_DP_N = {MAX_DP_N}, got n = {n}")
    per_row = max(n * (1 << max(n - 1, 0)), 1)
    chunk = max(1, _DP_CHUNK_ELEMENTS // per_row)
    if b <= chunk:
        return _pl_dp(s_p, s_q)
    needs_grad = torch.is_grad_enabled() and (
        s_p.requires_grad or (s_q is not None and s_q.requires_grad)
    )
    outs = []
    for start in range(0, b, chunk):
        sp = s_p[start : start + chunk]
        sq = None if s_q is None else s_q[start : start + chunk]
        if needs_grad:
            outs.append(checkpoint(_pl_dp, sp, sq, use_reentrant=False))
        else:
            outs.append(_pl_dp(sp, sq))
    return torch.cat(outs)


def pl_kl(s_p: Tensor, s_q: Tensor) -> Tensor:
    """``KL(PL(s_p) || PL(s_q))`` per row ``[B]``, by a DP over subsets (no enumeration).

    ``O(B * n * 2**n)`` time; differentiable in both arguments; practical to n ~ 16. The reverse
    KL is ``pl_kl(s_q, s_p)``.
    """
    _check_scores(s_p)
    if s_p.shape != s_q.shape:
        raise ValueError(f"shape mismatch: {tuple(s_p.shape)} vs {tuple(s_q.shape)}")
    dtype = torch.promote_types(_compute_dtype(s_p), _compute_dtype(s_q))
    sp, sq = s_p.to(dtype), s_q.to(dtype)
    sp = sp - sp.max(dim=-1, keepdim=True).values.detach()
    sq = sq - sq.max(dim=-1, keepdim=True).values.detach()
    return _pl_dp_batched(sp, sq).clamp_min(0.0)


def ranking_entropy(scores: Tensor) -> Tensor:
    """Entropy (nats) of the Plackett-Luce ranking distribution per row ``[B]``.

    Exact, via the ``O(B * n * 2**n)`` subset DP (works for n up to ~16, no enumeration).
    """
    _check_scores(scores)
    s = _as_float(scores)
    s = s - s.max(dim=-1, keepdim=True).values.detach()
    return _pl_dp_batched(s, None).clamp_min(0.0)


def group(scores: Tensor, k: int) -> Tensor:
    """Split decomposition: cut each row's n items into contiguous groups of k, ``[B*(n//k), k]``."""
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, n], got {tuple(scores.shape)}")
    n = scores.shape[-1]
    if k < 2:
        raise ValueError(f"group size k must be >= 2, got {k}")
    if n % k != 0:
        raise ValueError(f"n = {n} is not divisible by group size k = {k}")
    return scores.reshape(-1, k)
