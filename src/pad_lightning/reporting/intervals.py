"""Bootstrap intervals for scores measured over training seeds and test prompts.

An *arm* (one training configuration) is trained once per seed and every trained model is scored
on the same P test prompts: x[s, p] is the score (e.g. exact match) of seed s's model on prompt
p, an [S][P] array. A difference between two arms a and b is modelled as

    d[s, p] = mu + u_s + v_p + w_sp,    Var u = su^2, Var v = sv^2, Var w = sw^2,

u_s the effect of the training seed (two runs of one arm scatter), v_p the prompt's own effect on
the difference (shared by every seed: the prompts are the same for every seed) and w_sp the
rest. The estimate dbar = mean_{s,p} d[s, p] has

    Var dbar = su^2 / S + sv^2 / P + sw^2 / (S P).

A bootstrap of prompts alone on the seed-averaged differences c_p = mean_s d[s, p]
(``seed_level="fixed"``) estimates sv^2 / P + sw^2 / (S P): it is conditional on the S trained
models, and an arm whose seeds scatter gets the interval of one whose seeds agree. The hierarchical forms add
the seed level. Each draws B replicates theta*_b, all from one draw of prompt weights V (counts
of P prompts drawn with replacement, / P: prompts are paired across arms and seeds), and returns
the percentile interval [q_{(1-level)/2}, q_{(1+level)/2}] of theta* with the point estimate:

* ``seed_level="resample"``, the two-level bootstrap: draw S seeds with replacement (weights W,
  counts / S), then the prompts, one draw shared by the drawn seeds (the design is crossed: a
  prompt's effect v_p repeats across seeds):

      theta* = sum_s sum_p W_s V_p d[s, p].

  Its seed level only sees the S observed seed means: with S = 3 and the seed level dominant the
  interval is about their range, which holds the true mean with probability 1 - 2 (1/2)^3 = 75%.
* ``seed_level="t"`` (the default, for few seeds): the seed level is Student's t on the seed
  means, the prompt level resampled:

      theta* = dbar + (s_m / sqrt(S)) T + lambda sum_p V_p (c_p - cbar),   T ~ t_{S-1},

  s_m^2 the sample variance of the seed means m_s = mean_p d[s, p] (they are independent given
  the prompts, each of variance su^2 + sw^2 / P, so s_m^2 / S carries su^2 / S + sw^2 / (S P)
  with S - 1 degrees of freedom), and lambda shrinks the prompt level to the prompts' shared
  effect sv^2 / P that the seed means do not carry, from the two-way analysis of variance of d:

      lambda^2 = max(0, 1 - MS_res / MS_prompt),
      MS_res = sum_{s,p} (d[s,p] - m_s - c_p + dbar)^2 / ((S-1)(P-1))   (estimates sw^2),
      MS_prompt = S sum_p (c_p - cbar)^2 / (P-1)                        (estimates S sv^2 + sw^2),

  so that Var theta* is about Var dbar with nothing counted twice. When every prompt of a seed
  has the same value it is the t interval on the seed means, dbar -+ t_{S-1} s_m / sqrt(S); with
  one seed it is the prompt bootstrap (no seed level, lambda = 1). With S = 3 the t quantile is
  4.30: even when the seeds agree the interval pays for knowing their spread from 3 values (an
  estimate of the seed variance from the residual noise would be narrower and, with 3 seeds,
  under-cover: it takes seeds that happen to agree for seeds that do).

Forms: `hierarchical_interval` (paired seeds: seed s of a and seed s of b trained with the same
seed; d = a - b), `unpaired_interval` (seeds not matched, e.g. an arm against a model evaluated
once: each arm's seed level drawn independently; the prompt level on the difference of the
seed-averaged values, lambda^2 = max(0, 1 - sum_i (MS_res,i / S_i) / var_p(c_a - c_b)), a fixed
model's MS_res being 0), `mean_interval` (one arm). `seeds_needed` is the power note: how many
seeds a difference needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

Scores = Sequence[Sequence[float]] | torch.Tensor  # [seeds][prompts]
SEED_LEVELS = ("t", "resample", "fixed")
RESAMPLES = 4000


class Interval(NamedTuple):
    """A point estimate and its interval; unpacks as (mean, low, high)."""

    mean: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


class Spread(NamedTuple):
    """Mean over seeds of each seed's mean over prompts, their sample sd (nan for one seed), and
    the number of seeds."""

    mean: float
    sd: float
    seeds: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "-"
        sd = "-" if math.isnan(self.sd) else f"{self.sd:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {sd}"


NAN = Interval(math.nan, math.nan, math.nan)


def as_scores(x: Scores) -> torch.Tensor:
    """[seeds][prompts] as a float64 tensor (a flat list is one seed)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    return t.unsqueeze(0) if t.dim() == 1 else t


def seed_spread(x: Scores) -> Spread:
    """`Spread` of an arm's per-seed means m_s = mean_p x[s, p]."""
    x = as_scores(x)
    if x.numel() == 0:
        return Spread(math.nan, math.nan, int(x.shape[0]) if x.dim() == 2 else 0)
    m = x.mean(1)
    sd = float(m.std()) if len(m) > 1 else math.nan
    return Spread(float(m.mean()), sd, len(m))


class SeedLevel(NamedTuple):
    """One arm's seed level (module docstring): the variance s_m^2 / S of its mean over seeds,
    its degrees of freedom S - 1, and MS_res / S, the residual noise of the seed-averaged values
    c_p that the seed level already carries."""

    var: float
    df: int
    noise: float


def seed_level_of(x: torch.Tensor) -> SeedLevel:
    """s_m^2 / S, S - 1 and MS_res / S of an [S, P] arm; no seed level (0, 0, 0) for one seed."""
    seeds, prompts = x.shape
    if seeds < 2:
        return SeedLevel(0.0, 0, 0.0)
    ms_res = 0.0
    if prompts > 1:
        residual = x - x.mean(1, keepdim=True) - x.mean(0, keepdim=True) + x.mean()
        ms_res = float((residual**2).sum()) / ((seeds - 1) * (prompts - 1))
    return SeedLevel(float(x.mean(1).var()) / seeds, seeds - 1, ms_res / seeds)


def prompt_weights(prompts: int, resamples: int, gen: torch.Generator) -> torch.Tensor:
    """[resamples, prompts] bootstrap weights: counts of a draw of `prompts` with replacement,
    divided by `prompts` (each row sums to 1)."""
    idx = torch.randint(prompts, (resamples, prompts), generator=gen)
    counts = torch.zeros(resamples, prompts, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64)) / prompts


def seed_weights(seeds: int, resamples: int, gen: torch.Generator) -> torch.Tensor:
    """[resamples, seeds] bootstrap weights of a draw of `seeds` seeds with replacement."""
    return prompt_weights(seeds, resamples, gen)


def student_t(df: int, resamples: int, gen: torch.Generator) -> torch.Tensor:
    """`resamples` draws of Student's t with integer `df`: Z / sqrt(chi2_df / df), chi2_df a sum
    of `df` squared standard normals."""
    z = torch.randn(resamples, generator=gen, dtype=torch.float64)
    chi2 = torch.zeros(resamples, dtype=torch.float64)
    for _ in range(df):
        chi2 += torch.randn(resamples, generator=gen, dtype=torch.float64) ** 2
    return z / (chi2 / df).sqrt()


def t_replicates(xs: list[tuple[torch.Tensor, float]], v: torch.Tensor, gen) -> torch.Tensor:
    """[B] replicates of the "t" form (module docstring) minus the point estimate."""
    e = sum(sign * x.mean(0) for x, sign in xs)  # per-prompt seed-averaged value of the sum
    levels = [(seed_level_of(x), sign) for x, sign in xs]
    spread = float(e.var()) if len(e) > 1 else 0.0
    noise = sum(level.noise for level, _ in levels)
    lam = math.sqrt(max(0.0, 1 - noise / spread)) if spread > 0 else 0.0
    theta = lam * (v @ (e - e.mean()))
    for level, sign in levels:
        if level.var > 0:
            theta = theta + sign * math.sqrt(level.var) * student_t(level.df, v.shape[0], gen)
    return theta


def replicates(
    arms: Sequence[tuple[Scores, float]],
    *,
    seed_level: str = "t",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, torch.Tensor]:
    """Point estimate and [resamples] bootstrap replicates of sum_i sign_i mean(x_i) over
    `arms` = [(x_i, sign_i)], each x_i [seeds_i][P] with its own seed level and one prompt draw
    shared by all (the prompts are paired). The prompt weights are drawn first: with one seed
    every `seed_level` gives the same replicates (to rounding)."""
    if seed_level not in SEED_LEVELS:
        raise ValueError(f"seed_level {seed_level!r}: one of {SEED_LEVELS}")
    xs = [(as_scores(x), sign) for x, sign in arms]
    prompts = {x.shape[1] for x, _ in xs}
    if len(prompts) != 1:
        raise ValueError(f"arms over different numbers of prompts: {sorted(prompts)}")
    gen = torch.Generator().manual_seed(seed)
    v = prompt_weights(prompts.pop(), resamples, gen)
    point = sum(sign * float(x.mean()) for x, sign in xs)
    if seed_level == "t":
        return point, point + t_replicates(xs, v, gen)
    theta = 0.0
    for x, sign in xs:
        w = seed_weights(x.shape[0], resamples, gen) if seed_level == "resample" else None
        theta = theta + sign * (((w @ x) * v).sum(1) if w is not None else v @ x.mean(0))
    return point, theta


Bounds = tuple[float, float] | None


def interval(
    arms: Sequence[tuple[Scores, float]],
    *,
    level: float,
    seed_level: str,
    resamples: int,
    seed: int,
    bounds: Bounds,
) -> Interval:
    """The percentile interval of `replicates(arms)`, clipped to the values the estimate can take
    when one score lies in `bounds` = (lo, hi): [lo, hi] for a mean, [lo - hi, hi - lo] for a
    difference (the t seed level is unbounded; exact match is not)."""
    xs = [(as_scores(x), sign) for x, sign in arms]
    if any(x.numel() == 0 for x, _ in xs):
        return NAN
    point, theta = replicates(xs, seed_level=seed_level, resamples=resamples, seed=seed)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=theta.dtype)
    low, high = (float(v) for v in torch.quantile(theta, q))
    if bounds is not None:
        floor = sum(min(sign * bounds[0], sign * bounds[1]) for _, sign in xs)
        ceiling = sum(max(sign * bounds[0], sign * bounds[1]) for _, sign in xs)
        low, high = min(max(low, floor), ceiling), max(min(high, ceiling), floor)
    return Interval(point, low, high)


def hierarchical_interval(
    a: Scores,
    b: Scores,
    *,
    level: float = 0.95,
    seed_level: str = "t",
    resamples: int = RESAMPLES,
    seed: int = 0,
    bounds: Bounds = None,
) -> Interval:
    """mean(a - b) and its `level` interval over seeds and prompts; `a`, `b`: [seeds][prompts]
    of two arms whose seed s was trained with the same seed (paired seeds) on the same prompts
    (paired prompts). The difference d = a - b is bootstrapped as one arm (module docstring);
    `bounds`: the range of one score, e.g. (0, 1) for exact match."""
    a, b = as_scores(a), as_scores(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arms of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if bounds is not None:
        bounds = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    return interval(
        [(a - b, 1.0)],
        level=level,
        seed_level=seed_level,
        resamples=resamples,
        seed=seed,
        bounds=bounds,
    )


def unpaired_interval(
    a: Scores,
    b: Scores,
    *,
    level: float = 0.95,
    seed_level: str = "t",
    resamples: int = RESAMPLES,
    seed: int = 0,
    bounds: Bounds = None,
) -> Interval:
    """mean(a) - mean(b) and its interval for arms whose seeds are not matched (any numbers of
    seeds, e.g. an arm against a model evaluated once): each arm's seed level drawn independently,
    one prompt draw shared (the prompts are paired)."""
    return interval(
        [(a, 1.0), (b, -1.0)],
        level=level,
        seed_level=seed_level,
        resamples=resamples,
        seed=seed,
        bounds=bounds,
    )


def mean_interval(
    a: Scores,
    *,
    level: float = 0.95,
    seed_level: str = "t",
    resamples: int = RESAMPLES,
    seed: int = 0,
    bounds: Bounds = None,
) -> Interval:
    """mean(a) over seeds and prompts and its interval; `a`: [seeds][prompts]."""
    return interval(
        [(a, 1.0)],
        level=level,
        seed_level=seed_level,
        resamples=resamples,
        seed=seed,
        bounds=bounds,
    )


def seed_differences(a: Scores, b: Scores) -> torch.Tensor:
    """[seeds] per-seed differences of means, mean_p a[s, p] - mean_p b[s, p] (paired seeds)."""
    return as_scores(a).mean(1) - as_scores(b).mean(1)


def seeds_needed(sd: float, gap: float, *, level: float = 0.95, power: float = 0.8) -> float:
    """Seeds per arm for a two-sided `level` interval to exclude 0 with probability `power` when
    the true difference is `gap` and one seed's difference has standard deviation `sd`:

        n = ceil(((z_{(1+level)/2} + z_{power}) sd / gap)^2),   z the standard normal quantile,

    ((1.96 + 0.84) sd / gap)^2 for 95% and 80%: the mean of n seeds' differences has sd
    sd / sqrt(n), and the interval excludes 0 when gap exceeds z_{(1+level)/2} sd / sqrt(n).
    The normal (large-n) form; at least 2 (a spread needs two seeds); inf for gap 0 or an
    unknown sd. It counts the seed level only: the prompt level does not shrink with seeds."""
    if math.isnan(sd) or math.isnan(gap) or gap == 0:
        return math.inf
    z = torch.special.ndtri(torch.tensor([(1 + level) / 2, power], dtype=torch.float64))
    return float(max(2, math.ceil((float(z.sum()) * sd / abs(gap)) ** 2 - 1e-9)))


VERDICTS = ("supported", "refuted", "inconclusive")


def verdict(interval: Interval, direction: int = 1) -> str:
    """ "supported" when the interval excludes 0 on the side `direction` (+1: the claim says a > b,
    -1: a < b), "refuted" when it excludes 0 on the other side, "inconclusive" otherwise."""
    if math.isnan(interval.low):
        return "inconclusive"
    if direction * interval.low > 0 and direction * interval.high > 0:
        return "supported"
    if direction * interval.low < 0 and direction * interval.high < 0:
        return "refuted"
    return "inconclusive"


def combined_verdict(verdicts: Sequence[str]) -> str:
    """A claim decided by several intervals (all of which it asserts): supported when every one
    supports it, refuted when any one refutes it, inconclusive otherwise (or with none)."""
    if not verdicts:
        return "inconclusive"
    if "refuted" in verdicts:
        return "refuted"
    return "supported" if all(v == "supported" for v in verdicts) else "inconclusive"
