"""Tests for the PAD losses (pad_lightning.ranking.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from pad_lightning.ranking.losses import (
    DIVERGENCES,
    LOSSES,
    decomposed,
    loss_function,
    max_group_size,
    ppd,
    ppd_kl,
    ppd_reverse_kl,
    vpd,
)
from pad_lightning.ranking.plackett_luce import MAX_DP_N, MAX_EXACT_N, jsd, kl, ranking_log_probs
from pad_lightning.runtime.errors import NonFiniteScoresError

F64 = torch.float64
# every loss function a config can select: loss=vpd, loss=ppd loss.divergence=jsd|kl|reverse_kl
ALL = {"vpd": vpd, **{f"ppd-{d}": fn for d, fn in DIVERGENCES.items()}}


def test_registry():
    assert set(LOSSES) == {"ppd", "vpd"}
    assert set(DIVERGENCES) == {"jsd", "kl", "reverse_kl"}
    assert loss_function("ppd") is ppd and loss_function("ppd", "jsd") is ppd
    assert loss_function("ppd", "kl") is ppd_kl
    assert loss_function("ppd", "reverse_kl") is ppd_reverse_kl
    assert loss_function("vpd", "kl") is vpd  # the divergence only applies to PPD
    with pytest.raises(ValueError, match="valid"):
        loss_function("ppd", "tv")
    with pytest.raises(ValueError, match="valid"):
        loss_function("dpo")
    assert max_group_size("ppd") == MAX_EXACT_N
    assert max_group_size("ppd", "kl") == max_group_size("ppd", "reverse_kl") == MAX_DP_N
    assert max_group_size("vpd") is None
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    for name, fn in ALL.items():
        out = fn(s, t)
        assert out.shape == (3,), name
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl"])
def test_kl_divergences_at_n16(divergence):
    # beyond enumeration (16! rankings): the subset DP is exact; it vanishes for equal laws,
    # is shift invariant per row, and its gradient is finite
    torch.manual_seed(5)
    fn = loss_function("ppd", divergence)
    s = torch.randn(4, 16, requires_grad=True)
    t = torch.randn(4, 16)
    out = fn(s, t)
    assert out.shape == (4,) and (out > 0).all()
    out.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    torch.testing.assert_close(fn(t, t), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(fn(s.detach() + 3.0, t - 1.0), out.detach(), atol=1e-4, rtol=1e-4)


def test_vpd_known_values():
    torch.testing.assert_close(
        vpd(torch.zeros(1, 2), torch.zeros(1, 2)), torch.tensor([math.log(2)])
    )
    a, b = 1.5, -0.7
    student = torch.tensor([[a, b]], dtype=F64)
    teacher = torch.tensor([[2.0, 1.0]], dtype=F64)  # teacher ranking [0, 1]
    torch.testing.assert_close(
        vpd(student, teacher), torch.tensor([math.log1p(math.exp(b - a))], dtype=F64)
    )
    # 3 items, teacher ranking [2, 0, 1]
    s = [0.3, -1.0, 2.0]
    teacher = torch.tensor([[0.5, 0.1, 0.9]], dtype=F64)
    e = [math.exp(v) for v in s]
    expected = -(math.log(e[2] / (e[0] + e[1] + e[2])) + math.log(e[0] / (e[0] + e[1])))
    torch.testing.assert_close(
        vpd(torch.tensor([s], dtype=F64), teacher), torch.tensor([expected], dtype=F64)
    )


def test_vpd_ties_stable():
    # equal teacher scores keep index order: ranking [0, 1, 2]
    s = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)
    e = [1.0, math.e, math.e**2]
    expected = -(math.log(e[0] / sum(e)) + math.log(e[1] / (e[1] + e[2])))
    torch.testing.assert_close(
        vpd(s, torch.zeros(1, 3, dtype=F64)), torch.tensor([expected], dtype=F64)
    )


def test_ppd_matches_definition():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    lp_t, lp_s = ranking_log_probs(t), ranking_log_probs(s)
    p_t, p_s = lp_t.exp(), lp_s.exp()
    m = (p_t + p_s) / 2
    expected = 0.5 * (p_t * (p_t / m).log()).sum(-1) + 0.5 * (p_s * (p_s / m).log()).sum(-1)
    torch.testing.assert_close(ppd(s, t), expected)
    torch.testing.assert_close(ppd(s, s), torch.zeros(4, dtype=F64), atol=1e-12, rtol=0)
    assert (ppd(s * 10, t * 10) <= math.log(2)).all()


def test_kl_losses_match_enumeration():
    torch.manual_seed(1)
    s, t = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    lp_t, lp_s = ranking_log_probs(t), ranking_log_probs(s)
    torch.testing.assert_close(ppd_kl(s, t), kl(lp_t, lp_s))
    torch.testing.assert_close(ppd_reverse_kl(s, t), kl(lp_s, lp_t))


def test_teacher_gets_no_gradient():
    s = torch.randn(2, 4, requires_grad=True)
    t = torch.randn(2, 4, requires_grad=True)
    for fn in ALL.values():
        s.grad = t.grad = None
        fn(s, t).sum().backward()
        assert t.grad is None
        assert s.grad is not None and torch.isfinite(s.grad).all()


def test_gradcheck_losses():
    torch.manual_seed(2)
    s = torch.randn(2, 4, dtype=F64, requires_grad=True)
    t = torch.randn(2, 4, dtype=F64)
    for fn in (ppd, vpd, ppd_kl, ppd_reverse_kl):
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, t), (s,))


def test_bf16_inputs():
    s = torch.randn(2, 4).bfloat16().requires_grad_()
    t = torch.randn(2, 4).bfloat16()
    for fn in ALL.values():
        out = fn(s, t)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        out.sum().backward()
        assert s.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(ALL))
def test_decomposed_full_group_is_plain(name):
    fn = ALL[name]
    torch.manual_seed(3)
    s, t = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(decomposed(fn, s, t, 4), fn(s, t))
    torch.testing.assert_close(decomposed(fn, s, t, None), fn(s, t))


@pytest.mark.parametrize("name", sorted(ALL))
def test_decomposed_split_two_groups(name):
    fn = ALL[name]
    torch.manual_seed(4)
    s, t = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    expected = fn(s[:, :2], t[:, :2]) + fn(s[:, 2:], t[:, 2:])
    torch.testing.assert_close(decomposed(fn, s, t, 2), expected)


def test_decomposed_ppd_two_item_groups_by_hand():
    # per group of 2, the ranking law is (sigmoid(d), 1 - sigmoid(d)), d = s_a - s_b
    s = torch.tensor([[0.0, 1.0, 2.0, -1.0]], dtype=F64)
    t = torch.tensor([[1.0, 0.0, 0.5, 0.5]], dtype=F64)
    total = 0.0
    for (sa, sb), (ta, tb) in (((0.0, 1.0), (1.0, 0.0)), ((2.0, -1.0), (0.5, 0.5))):
        ps, pt = 1 / (1 + math.exp(sb - sa)), 1 / (1 + math.exp(tb - ta))
        lp = torch.log(torch.tensor([[pt, 1 - pt]], dtype=F64))
        lq = torch.log(torch.tensor([[ps, 1 - ps]], dtype=F64))
        total += jsd(lp, lq).item()
    torch.testing.assert_close(decomposed(ppd, s, t, 2), torch.tensor([total], dtype=F64))


def test_decomposed_bad_group_size():
    s, t = torch.randn(2, 6), torch.randn(2, 6)
    with pytest.raises(ValueError):
        decomposed(ppd, s, t, 4)
    with pytest.raises(ValueError):
        decomposed(ppd, s, t, 1)


# ------------------------------------------------------------------------- non-finite scores

CHECKED = {
    **ALL,
    **{f"split-{name}": (lambda s, t, fn=fn: decomposed(fn, s, t, 2)) for name, fn in ALL.items()},
}


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize(
    ("bad", "kind"), [(math.nan, "nan"), (math.inf, "+inf"), (-math.inf, "-inf")]
)
@pytest.mark.parametrize("name", sorted(CHECKED))
def test_non_finite_scores_raise(name, side, bad, kind):
    # before: PPD returned NaN, VPD ranked a NaN teacher score first (argsort puts NaN first)
    fn = CHECKED[name]
    torch.manual_seed(6)
    s, t = torch.randn(4, 4, requires_grad=True), torch.randn(4, 4)
    scores = {"student": s.detach().clone(), "teacher": t.clone()}
    scores[side][0, 1] = bad
    scores[side][2, 3] = bad
    scores[side][3, 0] = bad
    if side == "student":
        scores["student"].requires_grad_()
    with pytest.raises(NonFiniteScoresError) as exc:
        fn(scores["student"], scores["teacher"])
    message = str(exc.value)
    assert isinstance(exc.value, ValueError) and "\n" not in message
    assert message.startswith(f"{side} scores: 3 of 16 are not finite ({kind}); ")
    other = "teacher" if side == "student" else "student"
    assert f"{other} scores" not in message


def test_non_finite_scores_both_sides_and_kinds():
    s = torch.tensor([[0.0, math.nan, math.inf, 1.0]])
    t = torch.tensor([[-math.inf, 0.0, 1.0, 2.0]])
    with pytest.raises(
        NonFiniteScoresError,
        match=r"^student scores: 2 of 4 are not finite "
        r"\(nan, \+inf\); teacher scores: 1 of 4 are not finite \(-inf\); ",
    ):
        ppd(s, t)  # fmt: skip
    # finite but huge scores are still a loss, not an error
    assert torch.isfinite(vpd(torch.full((1, 4), 1e30), torch.full((1, 4), -1e30))).all()
