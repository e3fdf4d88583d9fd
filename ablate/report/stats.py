"""Seed-level statistics: t-intervals, Welch's t-test against the baseline, Holm's adjustment.

Replicates are few (typically 3-5 seeds), so everything here is explicit about
the cases where a test is not defined: fewer than two seeds in an arm, or no
spread at all within both arms. Those cases carry a ``status`` instead of a
``nan`` so the verdict can say what happened in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

OK = "ok"
FEW_SEEDS = "few_seeds"  # fewer than 2 seeds in an arm: no CI, no p-value
IDENTICAL = "identical"  # both arms constant and equal: difference 0 with no spread
NO_SPREAD = "no_spread"  # both arms constant but different: the t statistic is undefined
NO_DATA = "no_data"  # an arm has no replicates at all


@dataclass(frozen=True)
class Interval:
    """Mean of the seeds with a t-interval (``lo``/``hi`` are nan when ``n < 2``)."""

    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """``arm - baseline`` on one metric: Welch's t-test with its Welch-Satterthwaite CI."""

    diff: float
    lo: float
    hi: float
    p: float
    df: float
    n_arm: int
    n_base: int
    status: str
    p_adj: float = math.nan

    @property
    def tested(self) -> bool:
        return self.status == OK


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(x), dtype=float)
    return a[~np.isnan(a)]


def t_interval(x: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t-interval over seeds; a constant sample has a zero-width interval."""
    a = _clean(x)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(a.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    if np.ptp(a) == 0:  # scipy returns nan for scale=0; the honest interval is the point itself
        return Interval(mean, mean, mean, n)
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(a))
    return Interval(mean, float(lo), float(hi), n)


def welch(arm: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Welch's t-test of ``arm - base`` (unequal variances: arms differ in how noisy they are)."""
    a, b = _clean(arm), _clean(base)
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, na, nb, NO_DATA)
    diff = float(a.mean() - b.mean())
    if na < 2 or nb < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, na, nb, FEW_SEEDS)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        status = IDENTICAL if diff == 0 else NO_SPREAD
        return Comparison(diff, diff, diff, math.nan, math.nan, na, nb, status)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return Comparison(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df), na, nb, OK)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error across arms); nan entries stay nan.

    Written out because scipy has no Holm (``scipy.stats.false_discovery_control``
    only does Benjamini-Hochberg/Yekutieli) and statsmodels is not worth a dependency
    for five lines. Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j) p_(j)).
    """
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of points not dominated when ``x`` (cost) is minimised and ``y`` (metric) maximised.

    Sorted by increasing cost, a point is on the front when it beats every cheaper point.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.lexsort((-ys, xs))
    front, best = [], -math.inf
    for i in order:
        if ys[i] > best:
            front.append(int(i))
            best = ys[i]
    return front
