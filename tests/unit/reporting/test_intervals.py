"""pad_lightning.reporting.intervals: the hierarchical bootstrap against exact enumeration of every
resample, known values (zero spread, one seed, constant prompts: the t interval), the variance the
docstring states, coverage by simulation, and the power note's formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pad_lightning.reporting import intervals as iv

MANY = 200_000  # replicates where a Monte Carlo distribution is compared with an exact one


def exact_crossed(arms: list[tuple[list[list[float]], float]], seed_level: str) -> torch.Tensor:
    """Every equally likely replicate of the two-level bootstrap, by enumeration: each arm's
    ordered seed draws (S^S, one seed when not resampled) x one shared ordered prompt draw (P^P);
    replicate = sum_i sign_i mean of x_i over its drawn seeds x the drawn prompts."""
    xs = [(torch.tensor(x, dtype=torch.float64), sign) for x, sign in arms]
    prompts = xs[0][0].shape[1]
    seed_draws = [
        list(itertools.product(range(len(x)), repeat=len(x)))
        if seed_level == "resample"
        else [tuple(range(len(x)))]
        for x, _ in xs
    ]
    values = []
    for k in itertools.product(range(prompts), repeat=prompts):
        for js in itertools.product(*seed_draws):
            values.append(
                sum(
                    sign * float(x[list(j)][:, list(k)].mean())
                    for (x, sign), j in zip(xs, js, strict=True)
                )
            )
    return torch.tensor(values, dtype=torch.float64)


def inverse_cdf(values: torch.Tensor, p: float) -> float:
    """The p quantile of the distribution putting equal mass on `values`: min x with F(x) >= p."""
    v = values.sort().values
    return float(v[math.ceil(p * len(v)) - 1])


def within(x: float, exact: torch.Tensor, p: float, q: float) -> bool:
    """x lies between the exact distribution's p and q quantiles (to rounding)."""
    return inverse_cdf(exact, p) - 1e-9 <= x <= inverse_cdf(exact, q) + 1e-9


def cdf_distance(sample: torch.Tensor, exact: torch.Tensor) -> float:
    """sup_x |F_sample(x) - F_exact(x)| over the atoms of the exact distribution (a value within
    1e-9 of an atom, a rounding of the same mean, counts as that atom)."""
    atoms = exact.unique() + 1e-9
    f_sample = torch.searchsorted(sample.sort().values, atoms, right=True) / len(sample)
    f_exact = torch.searchsorted(exact.sort().values, atoms, right=True) / len(exact)
    return float((f_sample - f_exact).abs().max())


def difference(a, b) -> list[list[float]]:
    return (torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).tolist()


A = [[1.0, 0.0], [1.0, 1.0]]  # 2 seeds x 2 prompts
B = [[0.0, 0.0], [1.0, 0.0]]


def test_two_seeds_two_prompts_match_the_16_resamples():
    """Paired seeds: one seed draw for both arms, i.e. the bootstrap of d = A - B."""
    exact = exact_crossed([(difference(A, B), 1.0)], "resample")
    assert len(exact) == 16
    point, theta = iv.replicates([(difference(A, B), 1.0)], seed_level="resample", resamples=MANY)
    assert point == pytest.approx(float(exact.mean())) == pytest.approx(0.5)
    assert float(theta.mean()) == pytest.approx(float(exact.mean()), abs=2e-3)
    assert float(theta.var()) == pytest.approx(float(exact.var(unbiased=False)), rel=0.02)
    for atom in exact.unique():  # every atom at its exact probability
        assert float(((theta - atom).abs() < 1e-9).double().mean()) == pytest.approx(
            float((exact == atom).double().mean()), abs=4e-3
        )
    lo, hi = iv.hierarchical_interval(A, B, seed_level="resample", resamples=MANY)[1:]
    assert lo == pytest.approx(inverse_cdf(exact, 0.025))  # atoms of mass >= 1/16 > 0.025
    assert hi == pytest.approx(inverse_cdf(exact, 0.975))
    assert (lo, hi) == pytest.approx((0.0, 1.0))  # d = [[1, 0], [0, 1]]


@pytest.mark.parametrize("seed_level", ["resample", "fixed"])
def test_three_seeds_three_prompts_match_enumeration(seed_level):
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(3, 3, generator=gen, dtype=torch.float64).tolist()
    b = torch.rand(3, 3, generator=gen, dtype=torch.float64).tolist()
    exact = exact_crossed([(difference(a, b), 1.0)], seed_level)
    assert len(exact) == (27 * 27 if seed_level == "resample" else 27)
    _, theta = iv.replicates([(difference(a, b), 1.0)], seed_level=seed_level, resamples=MANY)
    assert cdf_distance(theta, exact) < 0.006
    assert float(theta.var()) == pytest.approx(float(exact.var(unbiased=False)), rel=0.02)
    _, lo, hi = iv.hierarchical_interval(a, b, seed_level=seed_level, resamples=MANY)
    assert within(lo, exact, 0.02, 0.03) and within(hi, exact, 0.97, 0.98)


def test_unpaired_arms_draw_their_seeds_independently_and_share_the_prompts():
    a = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    b = [[0.0, 1.0, 1.0]]  # a fixed model: one evaluation
    exact = exact_crossed([(a, 1.0), (b, -1.0)], "resample")
    assert len(exact) == 4 * 27
    point, theta = iv.replicates([(a, 1.0), (b, -1.0)], seed_level="resample", resamples=MANY)
    assert point == pytest.approx(-1 / 6)
    assert cdf_distance(theta, exact) < 0.006
    two = [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]  # two seeds each, not matched: 4 x 4 x 27
    exact = exact_crossed([(a, 1.0), (two, -1.0)], "resample")
    _, theta = iv.replicates([(a, 1.0), (two, -1.0)], seed_level="resample", resamples=MANY)
    assert cdf_distance(theta, exact) < 0.006
    # the seed levels add to the prompt level's variance
    assert float(theta.var()) > float(
        iv.replicates([(a, 1.0), (two, -1.0)], seed_level="fixed", resamples=MANY)[1].var()
    )


def test_with_one_seed_every_form_is_the_prompt_bootstrap():
    x = [[0.0, 1.0, 1.0, 0.5, 0.25]]
    y = [[0.5, 0.0, 1.0, 0.0, 0.0]]
    theta = {
        level: iv.replicates([(x, 1.0), (y, -1.0)], seed_level=level, resamples=5000)[1]
        for level in iv.SEED_LEVELS
    }
    for level in ("t", "resample"):  # the same prompt draws, to rounding
        assert torch.allclose(theta[level], theta["fixed"], rtol=0, atol=1e-12)
    exact = exact_crossed([(x, 1.0), (y, -1.0)], "fixed")  # 5^5 prompt draws
    assert cdf_distance(iv.replicates([(x, 1.0), (y, -1.0)], resamples=MANY)[1], exact) < 0.006
    assert iv.hierarchical_interval(x, y) == pytest.approx(iv.unpaired_interval(x, y))


@pytest.mark.parametrize("level", iv.SEED_LEVELS)
def test_no_spread_gives_a_zero_width_interval(level):
    flat = [[0.25] * 6] * 3
    shifted = [[0.75] * 6] * 3
    for interval in (
        iv.mean_interval(flat, seed_level=level),
        iv.hierarchical_interval(shifted, flat, seed_level=level),
        iv.unpaired_interval(shifted, [[0.25] * 6], seed_level=level),
    ):
        assert interval.low == pytest.approx(interval.mean, abs=1e-12)
        assert interval.high == pytest.approx(interval.mean, abs=1e-12)
    # paired arms whose difference is the same everywhere: the seeds' spread cancels
    a = torch.rand(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m, lo, hi = iv.hierarchical_interval(a + 0.1, a, seed_level=level)
    assert (m, lo, hi) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


@pytest.mark.parametrize(("seeds", "t975"), [(3, 4.302653), (5, 2.776445)])
def test_constant_prompts_give_the_t_interval_on_the_seed_means(seeds, t975):
    """d[s, p] = m_s: the prompt level is void, sigma_u = s_m / sqrt(S) and the interval is
    mbar -+ t_{S-1, 0.975} s_m / sqrt(S) (the t quantiles from tables)."""
    means = torch.tensor([0.30, 0.18, 0.41, 0.25, 0.36][:seeds], dtype=torch.float64)
    d = means[:, None].expand(seeds, 8)
    m, lo, hi = iv.mean_interval(d, resamples=MANY)
    half = t975 * float(means.std()) / math.sqrt(seeds)
    assert m == pytest.approx(float(means.mean()))
    assert m - lo == pytest.approx(half, rel=0.02) and hi - m == pytest.approx(half, rel=0.02)
    # the resampling form: the percentile bootstrap of the seed means, S^S draws
    exact = torch.tensor(
        [float(means[list(j)].mean()) for j in itertools.product(range(seeds), repeat=seeds)],
        dtype=torch.float64,
    )
    _, lo, hi = iv.mean_interval(d, seed_level="resample", resamples=MANY)
    assert within(lo, exact, 0.02, 0.03) and within(hi, exact, 0.97, 0.98)
    assert hi - lo < 2 * half  # narrower than the t interval: the under-coverage of few seeds


def anova(x: torch.Tensor) -> tuple[float, float, float]:
    """s_m^2, MS_res and MS_prompt of an [S, P] table, by loops over its cells."""
    seeds, prompts = x.shape
    m = [sum(x[s, p].item() for p in range(prompts)) / prompts for s in range(seeds)]
    c = [sum(x[s, p].item() for s in range(seeds)) / seeds for p in range(prompts)]
    grand = sum(m) / seeds
    var_m = sum((v - grand) ** 2 for v in m) / (seeds - 1)
    ms_res = sum(
        (x[s, p].item() - m[s] - c[p] + grand) ** 2 for s in range(seeds) for p in range(prompts)
    ) / ((seeds - 1) * (prompts - 1))
    ms_prompt = seeds * sum((v - grand) ** 2 for v in c) / (prompts - 1)
    return var_m, ms_res, ms_prompt


def test_seed_level_and_prompt_shrinkage_from_the_analysis_of_variance():
    gen = torch.Generator().manual_seed(1)
    m = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    c = torch.rand(10, generator=gen, dtype=torch.float64)
    additive = m[:, None] + c[None, :]  # no interaction: MS_res = 0
    assert iv.seed_level_of(additive) == pytest.approx((float(m.var()) / 4, 3, 0.0))
    x = additive + 0.3 * torch.randn(4, 10, generator=gen, dtype=torch.float64)
    var_m, ms_res, _ = anova(x)
    assert iv.seed_level_of(x) == pytest.approx((var_m / 4, 3, ms_res / 4))
    assert iv.seed_level_of(x[:1]) == (0.0, 0, 0.0)


def test_t_replicates_have_the_stated_variance():
    """Var theta* = (s_m^2 / S) nu / (nu - 2) + lambda^2 sum_p (c_p - cbar)^2 / P^2, nu = S - 1,
    lambda^2 = 1 - MS_res / MS_prompt."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 12, generator=gen, dtype=torch.float64) + torch.linspace(0, 1, 6)[:, None]
    x += torch.linspace(0, 0.5, 12)[None, :]  # prompt effects too: 0 < lambda < 1
    var_m, ms_res, ms_prompt = anova(x)
    lam2 = 1 - ms_res / ms_prompt
    c = x.mean(0)
    expected = var_m / 6 * 5 / 3 + lam2 * float(((c - c.mean()) ** 2).sum()) / 144
    assert 0 < lam2 < 1
    point, theta = iv.replicates([(x, 1.0)], resamples=MANY)
    assert float(theta.mean()) == pytest.approx(point, abs=3e-3)
    assert float(theta.var()) == pytest.approx(expected, rel=0.04)


def simulate(seeds: int, prompts: int, su: float, sv: float, sw: float, trials: int):
    """Coverage of the true mean 0 by each form's 95% interval, and its mean width: d = u_s + v_p
    + w_sp with fresh seeds and prompts every trial."""
    gen = torch.Generator().manual_seed(7)
    hits = dict.fromkeys(iv.SEED_LEVELS, 0)
    widths = dict.fromkeys(iv.SEED_LEVELS, 0.0)
    for trial in range(trials):
        d = (
            su * torch.randn(seeds, 1, generator=gen, dtype=torch.float64)
            + sv * torch.randn(1, prompts, generator=gen, dtype=torch.float64)
            + sw * torch.randn(seeds, prompts, generator=gen, dtype=torch.float64)
        )
        for level in hits:
            _, lo, hi = iv.mean_interval(d, seed_level=level, resamples=1000, seed=trial)
            hits[level] += lo <= 0 <= hi
            widths[level] += (hi - lo) / trials
    return {level: n / trials for level, n in hits.items()}, widths


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_coverage_when_the_seeds_scatter(one_thread):
    """3 seeds whose means scatter (sd 0.1) over 32 prompts with little noise: the t form covers
    about 95%; resampling 3 seeds about their range (75% in the limit); prompts alone far less."""
    cover, _ = simulate(seeds=3, prompts=32, su=0.1, sv=0.0, sw=0.1, trials=600)
    assert 0.93 <= cover["t"] <= 0.97
    assert cover["resample"] <= 0.8
    assert cover["fixed"] <= 0.4


@pytest.mark.parametrize(
    ("su", "sv", "sw"),
    [
        (0.0, 0.3, 0.3),  # prompts dominate, no seed effect
        (0.0, 0.0, 0.3),  # noise only
        (0.03, 0.1, 0.45),  # like the study's exact match: seeds and prompts both matter
    ],
)
def test_coverage_when_the_seeds_do_not_dominate(one_thread, su, sv, sw):
    """Every setting: the t form covers at least about 95%; with a seed effect on 512 prompts
    (the study's shape) the prompt bootstrap alone under-covers."""
    prompts = 512 if su else 32
    cover, width = simulate(seeds=3, prompts=prompts, su=su, sv=sv, sw=sw, trials=400)
    assert 0.93 <= cover["t"] <= 0.995, cover
    if su:
        assert cover["fixed"] <= 0.85, cover
    assert width["t"] >= width["fixed"]


def test_bounds_clip_the_interval_to_the_values_the_estimate_can_take():
    """Two seeds that disagree completely: t_1 reaches far past [0, 1]; clipped, the mean of
    exact match lies in [0, 1] and a difference of two in [-1, 1]."""
    split = [[1.0] * 4, [0.0] * 4]
    m, lo, hi = iv.mean_interval(split)
    assert m == 0.5 and lo < -1 and hi > 2
    assert iv.mean_interval(split, bounds=(0, 1)) == (0.5, 0.0, 1.0)
    assert iv.hierarchical_interval(split, [[0.5] * 4] * 2, bounds=(0, 1)) == (0.0, -1.0, 1.0)
    assert iv.unpaired_interval(split, [[0.0] * 4], bounds=(0, 1)) == (0.5, -1.0, 1.0)
    inside = [[0.4, 0.5], [0.45, 0.55], [0.5, 0.6], [0.42, 0.52]]  # well inside: unchanged
    assert iv.mean_interval(inside, bounds=(0, 1)) == iv.mean_interval(inside)


def test_intervals_are_deterministic_given_the_seed():
    a = torch.rand(3, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert iv.mean_interval(a, seed=5) == iv.mean_interval(a, seed=5)
    assert iv.mean_interval(a, seed=5) != iv.mean_interval(a, seed=6)


def test_shapes_and_empty_arms():
    with pytest.raises(ValueError, match="paired arms"):
        iv.hierarchical_interval([[1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="seed_level"):
        iv.mean_interval([[1.0]], seed_level="jackknife")
    with pytest.raises(ValueError, match="different numbers of prompts"):
        iv.unpaired_interval([[1.0, 0.0]], [[1.0]])
    assert all(math.isnan(v) for v in iv.unpaired_interval([[]], [[]]))
    assert all(math.isnan(v) for v in iv.mean_interval([[], []]))


def test_seed_spread_and_texts():
    spread = iv.seed_spread([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # seed means 0.5, 1, 0
    assert spread == pytest.approx((0.5, 0.5, 3))
    assert spread.text() == "0.500 ± 0.500"
    one = iv.seed_spread([[1.0, 0.0]])
    assert one.seeds == 1 and math.isnan(one.sd) and one.text() == "0.500 ± -"
    assert iv.Interval(0.1, -0.02, 0.25).text() == "+0.100 [-0.020, +0.250]"
    assert iv.NAN.text() == "-"
    d = iv.seed_differences([[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]])
    assert d.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    ("sd", "gap", "power", "needed"),
    [
        (0.1, 0.05, 0.8, 32),  # ((1.96 + 0.8416) * 2)^2 = 31.4
        (0.1, -0.05, 0.8, 32),  # either sign
        (0.1, 0.1, 0.8, 8),  # 2.8016^2 = 7.85
        (0.1, 0.1, 0.5, 4),  # z_0.5 = 0: 1.96^2 = 3.84
        (0.12, 0.03, 0.9, 169),  # ((1.96 + 1.2816) * 4)^2 = 168.1
        (0.01, 0.1, 0.8, 2),  # at least two seeds
    ],
)
def test_seeds_needed_known_values(sd, gap, power, needed):
    assert iv.seeds_needed(sd, gap, power=power) == needed


def test_seeds_needed_is_the_smallest_n_with_the_power():
    """With sd known, the 95% interval excludes 0 with probability Phi(gap sqrt(n) / sd - 1.96)
    (the far side neglected): at n it is >= power, at n - 1 below it."""
    z = float(torch.special.ndtri(torch.tensor(0.975, dtype=torch.float64)))
    for sd, gap in ((0.07, 0.03), (0.14, 0.05), (0.05, 0.01)):
        n = int(iv.seeds_needed(sd, gap))

        def power(k: int, sd=sd, gap=gap) -> float:
            return float(torch.special.ndtr(torch.tensor(gap * math.sqrt(k) / sd - z)))

        assert power(n) >= 0.8 > power(n - 1)
    assert iv.seeds_needed(0.1, 0.0) == math.inf
    assert iv.seeds_needed(math.nan, 0.1) == math.inf


def test_verdict_rule():
    assert iv.verdict(iv.Interval(0.1, 0.02, 0.2)) == "supported"
    assert iv.verdict(iv.Interval(-0.1, -0.2, -0.02)) == "refuted"
    assert iv.verdict(iv.Interval(0.1, -0.01, 0.2)) == "inconclusive"
    assert iv.verdict(iv.Interval(0.0, 0.0, 0.2)) == "inconclusive"  # touching 0 excludes nothing
    assert iv.verdict(iv.Interval(-0.1, -0.2, -0.02), direction=-1) == "supported"
    assert iv.verdict(iv.Interval(0.1, 0.02, 0.2), direction=-1) == "refuted"
    assert iv.verdict(iv.NAN) == "inconclusive"
    assert iv.combined_verdict(["supported", "supported"]) == "supported"
    assert iv.combined_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert iv.combined_verdict(["supported", "refuted"]) == "refuted"
    assert iv.combined_verdict([]) == "inconclusive"
