"""Tests for Plackett-Luce ranking distributions and divergences (pad_lightning.ranking.plackett_luce)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pad_lightning.ranking.plackett_luce import (
    MAX_EXACT_N,
    _dp_layers,
    _edge_levels,
    group,
    jsd,
    kl,
    permutations,
    pl_kl,
    plackett_luce_log_prob,
    ranking_entropy,
    ranking_log_probs,
    subset_logsumexp,
    subset_max_logsumexp,
)

F64 = torch.float64


def _brute_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """log P(tau) for every ranking by explicit float64 products of softmax factors."""
    rows = []
    for s in scores.double().tolist():
        row = []
        for tau in itertools.permutations(range(len(s))):
            prob = 1.0
            shift = max(s)
            for k in range(len(tau)):
                num = math.exp(s[tau[k]] - shift)
                den = sum(math.exp(s[tau[m]] - shift) for m in range(k, len(tau)))
                prob *= num / den
            row.append(math.log(prob) if prob > 0 else -math.inf)
        rows.append(row)
    return torch.tensor(rows, dtype=F64)


def _brute_log_probs_logspace(scores: torch.Tensor) -> torch.Tensor:
    """Same in log space (exact also when products underflow)."""
    rows = []
    for s in scores.double().tolist():
        row = []
        for tau in itertools.permutations(range(len(s))):
            total = 0.0
            for k in range(len(tau)):
                rest = [s[tau[m]] for m in range(k, len(tau))]
                mx = max(rest)
                total += s[tau[k]] - mx - math.log(sum(math.exp(v - mx) for v in rest))
            row.append(total)
        rows.append(row)
    return torch.tensor(rows, dtype=F64)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5])
def test_permutations_order(n):
    perms = permutations(n)
    assert perms.dtype == torch.long
    assert perms.tolist() == [list(p) for p in itertools.permutations(range(n))]
    assert permutations(n) is perms  # cached


def test_permutations_too_large():
    with pytest.raises(ValueError):
        permutations(MAX_EXACT_N + 1)


def test_subset_logsumexp():
    torch.manual_seed(0)
    s = torch.randn(3, 5, dtype=F64)
    table = subset_logsumexp(s)
    assert table.shape == (3, 32)
    assert torch.isneginf(table[:, 0]).all()
    for mask in range(1, 32):
        members = [i for i in range(5) if mask >> i & 1]
        torch.testing.assert_close(table[:, mask], torch.logsumexp(s[:, members], dim=-1))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_ranking_log_probs_brute_force(n, scale):
    torch.manual_seed(n)
    s = torch.randn(4, n, dtype=F64) * scale
    torch.testing.assert_close(ranking_log_probs(s), _brute_log_probs(s), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_ranking_log_probs_large_scores(n):
    torch.manual_seed(10 + n)
    s = torch.randn(3, n, dtype=F64) * 50
    ours = ranking_log_probs(s)
    torch.testing.assert_close(ours, _brute_log_probs_logspace(s), rtol=1e-9, atol=1e-9)
    # float32 keeps small log-probs accurate relative to their magnitude
    ours32 = ranking_log_probs(s.float())
    assert ours32.dtype == torch.float32
    torch.testing.assert_close(ours32.double(), ours, rtol=1e-5, atol=1e-3)
    assert torch.isfinite(ours32).all()


@pytest.mark.parametrize("n", range(1, 10))
def test_ranking_log_probs_normalised(n):
    torch.manual_seed(n)
    s = torch.randn(2, n) * 3
    lp = ranking_log_probs(s)
    assert lp.shape == (2, math.factorial(n))
    torch.testing.assert_close(torch.logsumexp(lp, dim=-1), torch.zeros(2), atol=1e-4, rtol=0)


def _enumerated_log_probs_f64(scores: torch.Tensor) -> torch.Tensor:
    """float64 per-position log P(tau) of every itertools.permutations ranking (vectorised)."""
    n = scores.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    permuted = scores.double()[:, perms]  # [B, n!, n]
    tail = torch.logcumsumexp(permuted.flip(-1), dim=-1).flip(-1)  # LSE of positions >= k
    return (permuted - tail).sum(-1)


@pytest.mark.parametrize("scale", [10.0, 1e2, 1e3, 1e4])
def test_ranking_law_float32_precise_at_large_scores(scale):
    # float32 log P used to be sum(s) minus a sum of subset LSEs: at |s| ~ 1e4 the two cancel
    # and the law summed to 1 only within ~3e-2; per-position factors keep it within 1e-5
    torch.manual_seed(7)
    s = torch.randn(16, 8) * scale
    lp = ranking_log_probs(s)
    assert lp.dtype == torch.float32 and lp.shape == (16, math.factorial(8))
    assert (lp.double().exp().sum(-1) - 1).abs().max() < 1e-5
    reference = _enumerated_log_probs_f64(s)
    assert (lp.double().exp() - reference.exp()).abs().max() < 1e-6
    # every log-probability to float32 relative precision (improbable ones are ~ -1e5)
    torch.testing.assert_close(lp.double(), reference, rtol=2e-6, atol=1e-5)


def test_ranking_law_float32_gradient_at_large_scores():
    torch.manual_seed(8)
    s = torch.randn(4, 6) * 300
    t = torch.randn(4, 6) * 300
    grads = []
    for dtype in (torch.float32, F64):
        x = s.to(dtype).detach().requires_grad_()
        jsd(ranking_log_probs(t.to(dtype)), ranking_log_probs(x)).sum().backward()
        grads.append(x.grad.double())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_subset_max_logsumexp():
    torch.manual_seed(9)
    s = torch.randn(3, 5, dtype=F64) * 1e4
    m, lse = subset_max_logsumexp(s)
    assert m.shape == lse.shape == (3, 32)
    assert torch.isneginf(m[:, 0]).all() and torch.isneginf(lse[:, 0]).all()
    for mask in range(1, 32):
        members = [i for i in range(5) if mask >> i & 1]
        torch.testing.assert_close(m[:, mask], s[:, members].max(dim=-1).values)
        torch.testing.assert_close(m[:, mask] + lse[:, mask], torch.logsumexp(s[:, members], -1))
        assert (lse[:, mask] >= 0).all() and (lse[:, mask] <= math.log(len(members)) + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ranking_log_probs_low_precision_inputs(dtype):
    s = torch.randn(3, 4).to(dtype)
    lp = ranking_log_probs(s)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ranking_log_probs(s.double()).float(), atol=1e-5, rtol=1e-5)


def test_ranking_log_probs_too_large():
    with pytest.raises(ValueError, match="MAX_EXACT_N"):
        ranking_log_probs(torch.zeros(1, MAX_EXACT_N + 1))


@pytest.mark.parametrize("n", [1, 3, 5])
def test_plackett_luce_log_prob_matches_rows(n):
    torch.manual_seed(n)
    s = torch.randn(3, n, dtype=F64) * 4
    table = ranking_log_probs(s)
    perms = permutations(n)
    for j in range(perms.shape[0]):
        lp = plackett_luce_log_prob(s, perms[j].expand(3, n))
        torch.testing.assert_close(lp, table[:, j])


def test_plackett_luce_log_prob_two_items():
    s = torch.tensor([[1.0, 3.0]], dtype=F64)
    lp = plackett_luce_log_prob(s, torch.tensor([[0, 1]]))
    torch.testing.assert_close(
        lp, torch.tensor([1.0 - math.log(math.exp(1) + math.exp(3))], dtype=F64)
    )


# ----------------------------------------------------------------------------------- JSD, KL


def _direct_jsd(p: list[float], q: list[float]) -> float:
    total = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log(a / m)
        if b > 0:
            total += 0.5 * b * math.log(b / m)
    return total


def test_jsd_properties():
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 24, dtype=F64) * 3, dim=-1)
    lq = torch.log_softmax(torch.randn(5, 24, dtype=F64) * 3, dim=-1)
    torch.testing.assert_close(jsd(lp, lp), torch.zeros(5, dtype=F64))
    torch.testing.assert_close(jsd(lp, lq), jsd(lq, lp))
    assert (jsd(lp, lq) <= math.log(2)).all() and (jsd(lp, lq) >= 0).all()
    direct = [_direct_jsd(a, b) for a, b in zip(lp.exp().tolist(), lq.exp().tolist(), strict=True)]
    torch.testing.assert_close(jsd(lp, lq), torch.tensor(direct, dtype=F64))
    # disjoint supports: maximal divergence ln 2
    a = torch.log(torch.tensor([[1.0, 0.0]], dtype=F64))
    b = torch.log(torch.tensor([[0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(jsd(a, b), torch.tensor([math.log(2)], dtype=F64))


def test_jsd_underflow_no_nan():
    lp = torch.tensor([[0.0, -math.inf, -math.inf], [-1e-3, -200.0, -7.0]], requires_grad=True)
    lq = torch.tensor([[-math.inf, 0.0, -math.inf], [-math.inf, -0.1, -2.4]], requires_grad=True)
    out = jsd(lp, lq)
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out <= math.log(2)).all()
    out.sum().backward()
    assert torch.isfinite(lp.grad).all() and torch.isfinite(lq.grad).all()
    # very large score gaps: the ranking distributions underflow but JSD stays finite
    s = torch.tensor([[0.0, 80.0, 160.0, 240.0]], requires_grad=True)
    t = torch.tensor([[240.0, 160.0, 80.0, 0.0]])
    val = jsd(ranking_log_probs(t), ranking_log_probs(s))
    val.sum().backward()
    assert torch.isfinite(val).all() and torch.isfinite(s.grad).all()
    torch.testing.assert_close(val, torch.tensor([math.log(2)]))


def test_kl_known_values():
    p = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=F64)
    q = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=F64)
    expected = [0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), 0.0]
    torch.testing.assert_close(kl(p.log(), q.log()), torch.tensor(expected, dtype=F64))
    # zero-probability entries of P contribute nothing
    p0 = torch.log(torch.tensor([[1.0, 0.0]], dtype=F64))
    q0 = torch.log(torch.tensor([[0.5, 0.5]], dtype=F64))
    torch.testing.assert_close(kl(p0, q0), torch.tensor([math.log(2)], dtype=F64))
    assert not torch.isnan(kl(q0, p0)).any()


# ------------------------------------------------------------------------------- gradients


def test_gradcheck_ranking_log_probs():
    torch.manual_seed(0)
    s = torch.randn(2, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(ranking_log_probs, (s,))


def test_gradcheck_jsd_of_rankings():
    torch.manual_seed(1)
    s = torch.randn(2, 4, dtype=F64, requires_grad=True)
    t = torch.randn(2, 4, dtype=F64, requires_grad=True)

    def fn(a, b):
        return jsd(ranking_log_probs(a), ranking_log_probs(b))

    assert torch.autograd.gradcheck(fn, (s, t))


def test_gradcheck_pl_kl_and_entropy():
    torch.manual_seed(2)
    s = torch.randn(2, 5, dtype=F64, requires_grad=True)
    t = torch.randn(2, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(pl_kl, (s, t))
    assert torch.autograd.gradcheck(ranking_entropy, (s,))


# ------------------------------------------------------------------------- subset DP: KL, H


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_pl_kl_brute_force(n):
    torch.manual_seed(100 + n)
    s = torch.randn(3, n, dtype=F64) * 2
    t = torch.randn(3, n, dtype=F64) * 2
    lp, lq = ranking_log_probs(s), ranking_log_probs(t)
    expected = (lp.exp() * (lp - lq)).sum(-1)
    torch.testing.assert_close(pl_kl(s, t), expected)
    torch.testing.assert_close(pl_kl(t, s), (lq.exp() * (lq - lp)).sum(-1))
    torch.testing.assert_close(pl_kl(s, s), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)
    assert (pl_kl(s, t) >= 0).all()


def test_pl_kl_shift_invariant_and_float32():
    torch.manual_seed(3)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(pl_kl(s + 7.0, t - 3.0), pl_kl(s, t), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        pl_kl(s, t).double(), pl_kl(s.double(), t.double()), atol=1e-5, rtol=1e-4
    )


def test_pl_kl_n16_runs():
    torch.manual_seed(4)
    s = torch.randn(4, 16, requires_grad=True)
    t = torch.randn(4, 16)
    out = pl_kl(t, s) + pl_kl(s, t)
    assert out.shape == (4,) and torch.isfinite(out).all() and (out >= 0).all()
    out.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_pl_kl_chunked_matches_unchunked(monkeypatch):
    import pad_lightning.ranking.plackett_luce as pref

    torch.manual_seed(5)
    s = torch.randn(5, 6, dtype=F64, requires_grad=True)
    t = torch.randn(5, 6, dtype=F64)
    full = pl_kl(s, t)
    (g_full,) = torch.autograd.grad(full.sum(), s)
    monkeypatch.setattr(pref, "_DP_CHUNK_ELEMENTS", 2 * 6 * 32)  # 2 rows per chunk
    chunked = pl_kl(s, t)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), s)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunked, g_full)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_ranking_entropy_brute_force(n):
    torch.manual_seed(200 + n)
    s = torch.randn(3, n, dtype=F64) * 2
    lp = ranking_log_probs(s)
    torch.testing.assert_close(ranking_entropy(s), -(lp.exp() * lp).sum(-1))


def test_ranking_entropy_uniform():
    for n in (3, 12):
        torch.testing.assert_close(
            ranking_entropy(torch.zeros(1, n, dtype=F64)),
            torch.tensor([math.lgamma(n + 1)], dtype=F64),
        )


# ------------------------------------------------------------------------------------ group


def test_group():
    s = torch.arange(12.0).view(2, 6)
    g = group(s, 3)
    assert g.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    with pytest.raises(ValueError):
        group(s, 4)
    with pytest.raises(ValueError):
        group(s, 1)


def test_cached_tables_built_in_inference_mode_work_under_autograd():
    # Lightning's test loop runs in inference mode; tables cached there must serve training
    _dp_layers.cache_clear()
    _edge_levels.cache_clear()
    s, t = torch.randn(2, 5, requires_grad=True), torch.randn(2, 5)
    with torch.inference_mode():
        pl_kl(t, s.detach())
        ranking_log_probs(s.detach())
    (pl_kl(t, s) + pl_kl(s, t) + jsd(ranking_log_probs(t), ranking_log_probs(s))).sum().backward()
    assert torch.isfinite(s.grad).all()
