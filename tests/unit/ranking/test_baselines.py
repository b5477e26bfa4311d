"""Tests for the baseline losses (pad_lightning.ranking.baselines).

Each loss is checked against an independent float64 brute force in plain Python (math,
itertools), against hand-computed values, and by gradcheck.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pad_lightning.ranking.baselines import (
    PAIR_CHOICES,
    dpo,
    dpo_pl,
    generalized_jsd,
    lipo_lambda,
    preference_pairs,
    rrhf,
    sequence_nll,
    simpo,
)

F64 = torch.float64
B = 3
NS = [2, 3, 4]


@pytest.fixture(autouse=True)
def _single_thread():
    # tiny tensors: multi-threaded CPU kernels (log_softmax: ~8 ms a call on a busy machine)
    # cost far more than the work; one thread keeps this file well under a second
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ brute-force helpers


def _rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x]


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _neg_logsigmoid(x: float) -> float:
    return _softplus(-x)


def _ranking(t: list[float]) -> list[int]:
    """Stable descending ranking (sorted() is stable)."""
    return sorted(range(len(t)), key=lambda i: -t[i])


def _pairs_py(t: list[float], choice: str) -> list[tuple[int, int]]:
    """Valid (winner, loser) pairs of one row, for the deterministic choices."""
    if choice == "all":
        out = []
        for i, j in itertools.combinations(range(len(t)), 2):
            if t[i] > t[j]:
                out.append((i, j))
            elif t[j] > t[i]:
                out.append((j, i))
        return out
    r = _ranking(t)
    return [(r[0], r[-1])] if t[r[0]] > t[r[-1]] else []


def _pairs_from(winner, loser, valid) -> list[list[tuple[int, int]]]:
    return [
        [(int(w), int(lo)) for w, lo, v in zip(wr, lr, vr, strict=True) if v]
        for wr, lr, vr in zip(winner, loser, valid, strict=True)
    ]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _dpo_py(pi, ref, pairs, beta) -> list[float]:
    return [
        _mean([_neg_logsigmoid(beta * ((p[w] - r[w]) - (p[lo] - r[lo]))) for w, lo in prs])
        for p, r, prs in zip(pi, ref, pairs, strict=True)
    ]


def _simpo_py(avg, pairs, beta, gamma) -> list[float]:
    return [
        _mean([_neg_logsigmoid(beta * (a[w] - a[lo]) - gamma) for w, lo in prs])
        for a, prs in zip(avg, pairs, strict=True)
    ]


def _dpo_pl_py(pi, ref, teacher, beta) -> list[float]:
    out = []
    for p, r, t in zip(pi, ref, teacher, strict=True):
        s = [beta * (a - b) for a, b in zip(p, r, strict=True)]
        rank = _ranking(t)
        logp = 0.0
        for k in range(len(rank)):
            logp += s[rank[k]] - math.log(sum(math.exp(s[i]) for i in rank[k:]))
        out.append(-logp if max(t) > min(t) else 0.0)
    return out


def _lipo_py(pi, ref, teacher, beta) -> list[float]:
    out = []
    for p, r, t in zip(pi, ref, teacher, strict=True):
        n = len(t)
        s = [beta * (a - b) for a, b in zip(p, r, strict=True)]
        rank_t = {item: pos for pos, item in enumerate(_ranking(t))}
        tau = {item: pos + 1 for pos, item in enumerate(_ranking(s))}
        psi = [(n - 1 - rank_t[i]) / (n - 1) for i in range(n)]
        total = 0.0
        for i, j in itertools.permutations(range(n), 2):
            if t[i] > t[j]:
                gain = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1))
                disc = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total += gain * disc * math.log1p(math.exp(-(s[i] - s[j])))
        out.append(total)
    return out


def _rrhf_py(avg, logp, teacher, sft_weight) -> list[float]:
    out = []
    for a, lp, t in zip(avg, logp, teacher, strict=True):
        if max(t) == min(t):
            out.append(0.0)
            continue
        rank_loss = sum(
            max(0.0, a[j] - a[i])
            for i, j in itertools.permutations(range(len(t)), 2)
            if t[i] > t[j]
        )
        out.append(rank_loss - sft_weight * lp[_ranking(t)[0]])
    return out


def _softmax_py(logits: list[float], temperature: float) -> list[float]:
    z = [v / temperature for v in logits]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _kl_py(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _gjsd_py(student, teacher, mask, beta, temperature) -> list[float]:
    out = []
    for s_seq, t_seq, m_seq in zip(student.tolist(), teacher.tolist(), mask.tolist(), strict=True):
        vals = []
        for s_tok, t_tok, m in zip(s_seq, t_seq, m_seq, strict=True):
            if not m:
                continue
            ps, pt = _softmax_py(s_tok, temperature), _softmax_py(t_tok, temperature)
            if beta == 0:
                vals.append(_kl_py(pt, ps))
            elif beta == 1:
                vals.append(_kl_py(ps, pt))
            else:
                mix = [beta * a + (1 - beta) * b for a, b in zip(pt, ps, strict=True)]
                vals.append(beta * _kl_py(pt, mix) + (1 - beta) * _kl_py(ps, mix))
        out.append(_mean(vals))
    return out


def _close(actual: torch.Tensor, expected: list[float], tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), atol=tol, rtol=tol)


def _inputs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pi = -5 + torch.randn(B, n, dtype=F64, generator=g)
    ref = -5 + torch.randn(B, n, dtype=F64, generator=g)
    teacher = torch.randn(B, n, dtype=F64, generator=g)
    return pi, ref, teacher


# ------------------------------------------------------------------------------------- pairs


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("choice", ["best_worst", "all"])
def test_pairs_match_brute_force(n, choice):
    _, _, teacher = _inputs(n, 10 + n)
    teacher[0, 1] = teacher[0, 0]  # a tie: that pair is not a preference pair
    winner, loser, valid = preference_pairs(teacher, choice)
    m = 1 if choice == "best_worst" else n * (n - 1) // 2
    assert winner.shape == loser.shape == valid.shape == (B, m)
    assert valid.dtype == torch.bool
    got = _pairs_from(winner, loser, valid)
    for row, t in zip(got, _rows(teacher), strict=True):
        assert sorted(row) == sorted(_pairs_py(t, choice))


def test_pairs_ties_and_errors():
    t = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 2.0]])
    for choice in PAIR_CHOICES:
        _, _, valid = preference_pairs(t, choice, torch.Generator().manual_seed(0))
        assert not valid[0].any()
    w, lo, v = preference_pairs(t, "best_worst")
    assert (int(w[1, 0]), int(lo[1, 0]), bool(v[1, 0])) == (0, 1, True)  # first of tied maxima
    with pytest.raises(ValueError, match="best_worst"):
        preference_pairs(t, "worst")
    w, lo, v = preference_pairs(torch.zeros(2, 1), "random")  # n = 1: no pair
    assert v.shape == (2, 1) and not v.any()
    assert preference_pairs(torch.zeros(2, 1), "all")[2].shape == (2, 0)


def test_random_pairs_reproducible_and_cover_all_pairs():
    n = 4
    teacher = torch.arange(n, dtype=F64).expand(500, n)  # distinct scores: every pair valid
    w1, l1, v1 = preference_pairs(teacher, "random", torch.Generator().manual_seed(7))
    w2, l2, _ = preference_pairs(teacher, "random", torch.Generator().manual_seed(7))
    assert torch.equal(w1, w2) and torch.equal(l1, l2)
    assert v1.all() and (w1 > l1).all()  # winner = higher teacher score = higher index here
    seen = {(int(a), int(b)) for a, b in zip(w1[:, 0], l1[:, 0], strict=True)}
    assert seen == {(j, i) for i, j in itertools.combinations(range(n), 2)}
    w3, _, _ = preference_pairs(teacher, "random", torch.Generator().manual_seed(8))
    assert not torch.equal(w1, w3)


# -------------------------------------------------------------------------------- dpo, simpo


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("choice", PAIR_CHOICES)
def test_dpo_and_simpo_match_brute_force(n, choice):
    pi, ref, teacher = _inputs(n, 20 + n)
    beta, gamma = 0.7, 1.3
    pairs = _pairs_from(*preference_pairs(teacher, choice, torch.Generator().manual_seed(1)))
    got = dpo(pi, ref, teacher, beta, choice, torch.Generator().manual_seed(1))
    _close(got, _dpo_py(_rows(pi), _rows(ref), pairs, beta))
    got = simpo(pi / 10, teacher, beta, gamma, choice, torch.Generator().manual_seed(1))
    _close(got, _simpo_py(_rows(pi / 10), pairs, beta, gamma))
    # float32 agrees with float64
    f32 = dpo(
        pi.float(), ref.float(), teacher.float(), beta, choice, torch.Generator().manual_seed(1)
    )
    assert f32.dtype == torch.float32
    torch.testing.assert_close(
        f32.double(),
        dpo(pi, ref, teacher, beta, choice, torch.Generator().manual_seed(1)),
        atol=1e-5,
        rtol=1e-5,
    )


def test_dpo_simpo_known_values():
    teacher = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)
    zeros = torch.zeros(1, 3, dtype=F64)
    for choice in ("best_worst", "all"):
        _close(dpo(zeros, zeros, teacher, 0.5, choice), [math.log(2)])
        _close(simpo(zeros, teacher, 10.0, 3.0, choice), [math.log1p(math.exp(3.0))])
    # one pair by hand: winner 2, loser 1; margin = beta * ((1 - 0.5) - (-2 - 0))
    pi = torch.tensor([[0.0, -2.0, 1.0]], dtype=F64)
    ref = torch.tensor([[0.0, 0.0, 0.5]], dtype=F64)
    _close(dpo(pi, ref, teacher, 0.1, "best_worst"), [math.log1p(math.exp(-0.1 * 2.5))])
    _close(simpo(pi, teacher, 2.0, 1.0, "best_worst"), [math.log1p(math.exp(-(2.0 * 3.0 - 1.0)))])


# ---------------------------------------------------------------------------- listwise losses


@pytest.mark.parametrize("n", NS)
def test_listwise_losses_match_brute_force(n):
    pi, ref, teacher = _inputs(n, 30 + n)
    beta = 0.8
    _close(dpo_pl(pi, ref, teacher, beta), _dpo_pl_py(_rows(pi), _rows(ref), _rows(teacher), beta))
    _close(
        lipo_lambda(pi, ref, teacher, beta),
        _lipo_py(_rows(pi), _rows(ref), _rows(teacher), beta),
    )
    avg = pi / 7
    _close(rrhf(avg, pi, teacher, 0.3), _rrhf_py(_rows(avg), _rows(pi), _rows(teacher), 0.3))
    for fn in (dpo_pl, lipo_lambda):
        f32 = fn(pi.float(), ref.float(), teacher.float(), beta)
        assert f32.dtype == torch.float32
        torch.testing.assert_close(f32.double(), fn(pi, ref, teacher, beta), atol=1e-5, rtol=1e-5)


def test_listwise_with_partial_ties_match_brute_force():
    pi, ref, teacher = _inputs(4, 41)
    teacher[:, 2] = teacher[:, 0]
    teacher[1] = 0.5  # a prompt with all scores equal: loss 0
    args = (_rows(pi), _rows(ref), _rows(teacher), 1.0)
    _close(dpo_pl(pi, ref, teacher, 1.0), _dpo_pl_py(*args))
    _close(lipo_lambda(pi, ref, teacher, 1.0), _lipo_py(*args))
    _close(rrhf(pi / 5, pi, teacher), _rrhf_py(_rows(pi / 5), _rows(pi), _rows(teacher), 1.0))


def test_lipo_known_value_n2():
    # psi = (1, 0), G = (1, 0); ranks under s are {1, 2} either way
    delta = abs((2**1 - 1) - 0) * abs(1 / math.log2(2) - 1 / math.log2(3))
    teacher = torch.tensor([[1.0, 0.0]], dtype=F64)
    ref = torch.zeros(1, 2, dtype=F64)
    for pi0, pi1 in ((0.3, -0.4), (-1.0, 2.0)):
        pi = torch.tensor([[pi0, pi1]], dtype=F64)
        expected = delta * math.log1p(math.exp(-2.0 * (pi0 - pi1)))
        _close(lipo_lambda(pi, ref, teacher, 2.0), [expected])


def test_dpo_pl_and_rrhf_known_values():
    teacher = torch.tensor([[0.1, 0.9]], dtype=F64)  # ranking [1, 0]
    pi = torch.tensor([[-3.0, -1.0]], dtype=F64)
    ref = torch.tensor([[-2.0, -2.0]], dtype=F64)
    # n = 2: PL of ranking [1, 0] = sigmoid(s_1 - s_0), s = 0.5 * (pi - ref) = (-0.5, 0.5)
    _close(dpo_pl(pi, ref, teacher, 0.5), [math.log1p(math.exp(-1.0))])
    avg = torch.tensor([[-0.2, -0.5]], dtype=F64)  # loser 0 beats winner 1: hinge 0.3
    _close(rrhf(avg, pi, teacher, sft_weight=2.0), [0.3 + 2.0 * 1.0])
    _close(rrhf(avg.flip(-1), pi, teacher, sft_weight=0.0), [0.0])


# ------------------------------------------------------------------------------ distillation


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_generalized_jsd_matches_brute_force(beta):
    g = torch.Generator().manual_seed(50)
    student = 2 * torch.randn(B, 4, 5, dtype=F64, generator=g)
    teacher = 2 * torch.randn(B, 4, 5, dtype=F64, generator=g)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    for temperature in (1.0, 0.7):
        got = generalized_jsd(student, teacher, mask, beta, temperature)
        _close(got, _gjsd_py(student, teacher, mask, beta, temperature))
    f32 = generalized_jsd(student.float(), teacher.float(), mask.long(), beta)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(
        f32.double(), generalized_jsd(student, teacher, mask, beta), atol=1e-5, rtol=1e-5
    )


def test_generalized_jsd_known_values():
    logits = torch.randn(2, 3, 6, dtype=F64)
    mask = torch.ones(2, 3)
    for beta in (0.0, 0.5, 0.9, 1.0):
        _close(generalized_jsd(logits, logits.clone(), mask, beta), [0.0, 0.0], tol=1e-12)
    # classic JSD on two tokens: P = (0.8, 0.2), Q = (0.3, 0.7)
    p, q = (0.8, 0.2), (0.3, 0.7)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    expected = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m, strict=True)) + 0.5 * sum(
        b * math.log(b / c) for b, c in zip(q, m, strict=True)
    )
    teacher = torch.tensor([[[math.log(0.8), math.log(0.2)]]], dtype=F64)
    student = torch.tensor([[[math.log(0.3), math.log(0.7)]]], dtype=F64)
    one = torch.ones(1, 1)
    _close(generalized_jsd(student, teacher, one, 0.5), [expected])
    # TRL's ends: beta=0 is KL(P_T || P_S), beta=1 is KL(P_S || P_T); limits of JSD_beta / beta
    fwd = 0.8 * math.log(0.8 / 0.3) + 0.2 * math.log(0.2 / 0.7)
    rev = 0.3 * math.log(0.3 / 0.8) + 0.7 * math.log(0.7 / 0.2)
    _close(generalized_jsd(student, teacher, one, 0.0), [fwd])
    _close(generalized_jsd(student, teacher, one, 1.0), [rev])
    eps = 1e-6
    _close(generalized_jsd(student, teacher, one, eps) / eps, [fwd], tol=1e-5)
    _close(generalized_jsd(student, teacher, one, 1 - eps) / eps, [rev], tol=1e-5)


def test_generalized_jsd_confident_and_masked():
    # near one-hot and -inf logits stay finite, with finite gradients
    student = torch.tensor([[[80.0, -80.0, float("-inf")], [0.0, 0.0, 0.0]]], requires_grad=True)
    teacher = torch.tensor([[[-80.0, 80.0, float("-inf")], [1.0, 2.0, 3.0]]])
    for beta in (0.0, 0.5, 1.0):
        out = generalized_jsd(student, teacher, torch.tensor([[1, 0]]), beta)
        assert torch.isfinite(out).all()
        # disjoint supports: JSD_0.5 = ln 2, the KL ends are the logit gap 160
        expected = math.log(2) if beta == 0.5 else 160.0
        assert out.item() == pytest.approx(expected, rel=1e-5)
        (grad,) = torch.autograd.grad(out.sum(), student)
        assert torch.isfinite(grad).all() and (grad[0, 1] == 0).all()
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, torch.ones(1, 2), 1.5)


def test_sequence_nll():
    logp = torch.tensor([[-6.0, -2.0], [-3.0, 0.0]], dtype=F64)
    lengths = torch.tensor([[3, 4], [1, 0]])
    expected = [
        _mean([-lp / max(n, 1) for lp, n in zip(row, lrow, strict=True)])
        for row, lrow in zip(logp.tolist(), lengths.tolist(), strict=True)
    ]
    _close(sequence_nll(logp, lengths), expected)
    _close(sequence_nll(logp, lengths), [(2.0 + 0.5) / 2, 1.5])
    assert sequence_nll(logp.float(), lengths).dtype == torch.float32


# ------------------------------------------------------------------- gradients and detachment


def test_gradcheck():
    pi, ref, teacher = _inputs(4, 60)
    pi.requires_grad_(True)
    for choice in ("best_worst", "all"):
        assert torch.autograd.gradcheck(lambda x, c=choice: dpo(x, ref, teacher, 0.7, c), (pi,))
        assert torch.autograd.gradcheck(lambda x, c=choice: simpo(x, teacher, 2.0, 0.5, c), (pi,))
    assert torch.autograd.gradcheck(lambda x: dpo_pl(x, ref, teacher, 0.7), (pi,))
    assert torch.autograd.gradcheck(lambda x: lipo_lambda(x, ref, teacher, 0.7), (pi,))
    assert torch.autograd.gradcheck(lambda x: rrhf(x / 5, x, teacher), (pi,))
    g = torch.Generator().manual_seed(61)
    student = torch.randn(2, 3, 5, dtype=F64, generator=g, requires_grad=True)
    t_logits = torch.randn(2, 3, 5, dtype=F64, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    for beta in (0.0, 0.4, 1.0):
        assert torch.autograd.gradcheck(
            lambda x, b=beta: generalized_jsd(x, t_logits, mask, b, 0.8), (student,)
        )


def test_ties_give_zero_loss_with_graph():
    pi = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ref = torch.randn(2, 3, dtype=F64)
    teacher = torch.ones(2, 3, dtype=F64)
    losses = {
        **{
            f"dpo-{c}": dpo(pi, ref, teacher, 1.0, c, torch.Generator().manual_seed(0))
            for c in PAIR_CHOICES
        },
        **{
            f"simpo-{c}": simpo(pi, teacher, 1.0, 1.0, c, torch.Generator().manual_seed(0))
            for c in PAIR_CHOICES
        },
        "dpo_pl": dpo_pl(pi, ref, teacher, 1.0),
        "lipo": lipo_lambda(pi, ref, teacher, 1.0),
        "rrhf": rrhf(pi, pi, teacher),
    }
    for name, loss in losses.items():
        assert loss.shape == (2,) and (loss == 0).all(), name
        (grad,) = torch.autograd.grad(loss.sum(), pi)
        assert (grad == 0).all(), name


def test_teacher_and_reference_get_no_gradient():
    pi = torch.randn(B, 4, requires_grad=True)
    ref = torch.randn(B, 4, requires_grad=True)
    teacher = torch.randn(B, 4, requires_grad=True)
    for loss in (
        dpo(pi, ref, teacher, 1.0, "all"),
        simpo(pi, teacher, 1.0, 0.5, "random"),
        dpo_pl(pi, ref, teacher, 1.0),
        lipo_lambda(pi, ref, teacher, 1.0),
        rrhf(pi, pi, teacher),
    ):
        assert loss.shape == (B,)
        pi.grad = None
        loss.sum().backward()
        assert pi.grad is not None and torch.isfinite(pi.grad).all()
        assert ref.grad is None and teacher.grad is None
    s_logits = torch.randn(2, 3, 4, requires_grad=True)
    t_logits = torch.randn(2, 3, 4, requires_grad=True)
    generalized_jsd(s_logits, t_logits, torch.ones(2, 3)).sum().backward()
    assert s_logits.grad is not None and t_logits.grad is None


def test_shape_errors():
    with pytest.raises(ValueError):
        dpo(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError):
        generalized_jsd(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_bf16_inputs_compute_in_float32():
    pi, ref, teacher = (x.bfloat16() for x in _inputs(3, 70))
    for out in (
        dpo(pi, ref, teacher, 1.0),
        simpo(pi, teacher, 1.0, 0.5),
        dpo_pl(pi, ref, teacher, 1.0),
        lipo_lambda(pi, ref, teacher, 1.0),
        rrhf(pi, pi, teacher),
        sequence_nll(pi, torch.ones(B, 3)),
        generalized_jsd(pi.view(B, 1, 3), ref.view(B, 1, 3), torch.ones(B, 1)),
    ):
        assert out.dtype == torch.float32 and out.shape == (B,) and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pi, ref, teacher = _inputs(4, 80)
    dev = torch.device("cuda")
    cpu_gen, cuda_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for choice in PAIR_CHOICES:
        expected = dpo(pi, ref, teacher, 0.5, choice, cpu_gen)  # CPU generator draws on CPU
        got = dpo(pi.to(dev), ref.to(dev), teacher.to(dev), 0.5, choice, cuda_gen)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected)
    for fn in (dpo_pl, lipo_lambda):
        got = fn(pi.to(dev), ref.to(dev), teacher.to(dev), 0.5)
        torch.testing.assert_close(got.cpu(), fn(pi, ref, teacher, 0.5))
    s, t = pi.view(B, 2, 2), ref.view(B, 2, 2)
    mask = torch.ones(B, 2)
    got = generalized_jsd(s.to(dev), t.to(dev), mask.to(dev), 0.3)
    torch.testing.assert_close(got.cpu(), generalized_jsd(s, t, mask, 0.3))
    # the global CUDA generator when none is given
    assert dpo(pi.to(dev), ref.to(dev), teacher.to(dev), 0.5, "random").device.type == "cuda"
