"""Tests for agreement and rollout statistics (pad_lightning.ranking.agreement)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pad_lightning.ranking.agreement import distinct_fraction, kendall_tau, nanmean, top1_agreement


def _tau_b(x: list[float], y: list[float]) -> float:
    """Kendall tau-b by brute force over pairs; NaN where a row is constant."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            ties_x += 1
            ties_y += 1
        elif dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx * dy > 0:
            concordant += 1
        else:
            discordant += 1
    pairs = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def test_kendall_tau_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for n in (3, 4, 6):
        a = torch.randint(0, 4, (40, n), generator=g).float()  # many ties
        b = torch.randint(0, 4, (40, n), generator=g).float()
        got = kendall_tau(a, b)
        expected = torch.tensor([_tau_b(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])
        assert got.shape == (40,)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, equal_nan=True)
    a, b = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)  # no ties
    expected = torch.tensor([_tau_b(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    torch.testing.assert_close(kendall_tau(a, b), expected, atol=1e-6, rtol=0)


def test_kendall_tau_known_values_and_constant_rows():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[10.0, 20.0, 30.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    tau = kendall_tau(a, b)
    assert tau[0].item() == pytest.approx(1.0)
    assert tau[1].item() == pytest.approx(-1.0)
    assert math.isnan(tau[2].item()) and math.isnan(tau[3].item())
    assert kendall_tau(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_kendall_tau_single_row():
    tau = kendall_tau(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 2.0]]))
    assert tau.shape == (1,)
    assert tau.item() == pytest.approx(1 / 3)


def test_top1_agreement():
    a = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, 5.0, 0.0]])
    b = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 1.0], [2.0, 2.0, 0.0], [0.0, 1.0, 2.0]])
    # agree; disagree; tie in b at the maximum counts; argmax of tied a is its first index
    torch.testing.assert_close(top1_agreement(a, b), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(top1_agreement(b, b), torch.ones(4))


def test_distinct_fraction():
    texts = [["a", "a", "b", "c"], ["x", "x", "x", "x"], ["p", "q", "r", "s"]]
    torch.testing.assert_close(distinct_fraction(texts), torch.tensor([0.75, 0.25, 1.0]))


def test_nanmean():
    assert nanmean(torch.tensor([1.0, float("nan"), 3.0])) == pytest.approx(2.0)
    assert math.isnan(nanmean(torch.tensor([float("nan")])))
