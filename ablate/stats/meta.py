"""One arm's effect pooled over tasks: a random-effects meta-analysis of per-task paired effects.

Each task t gives the arm's paired effect over the baseline ``y_t`` (``verdict.compare``'s
``diff``) with its standard error ``s_t`` (the crossed seeds x items estimate). Whether a
combination pays off depends on the task, so the tasks' true effects are not assumed equal:
``y_t = mu + u_t + e_t`` with ``u_t ~ N(0, tau^2)`` (between-task) and ``e_t ~ N(0, s_t^2)``.
statsmodels' ``combine_effects`` gives the pooled ``mu``, ``tau^2`` and ``I^2``, with the
Paule-Mandel ``tau^2`` (iterated, truncated at 0; its one-step DerSimonian-Laird estimate is not
truncated in statsmodels 0.15, and a negative ``tau^2`` would shrink the interval); the interval is Hartung-Knapp-Sidik-Jonkman (HKSJ: the random-effects variance scaled by
the weighted residual spread, t with k - 1 df), with the usual ad hoc floor that never lets the
scale drop below 1 (Knapp & Hartung; Roever et al. 2015): with 3-8 tasks the plain normal
interval, and HKSJ without the floor, cover far less than 95% when tau^2 is small but estimated
as 0 (``benchmarks/results/tasks.md`` measures all three). The prediction interval for a new
task's effect is ``mu +- t_{k-2} sqrt(tau^2 + se^2)`` (Higgins, Thompson & Spiegelhalter 2009),
which needs three tasks.

The verdict word follows the rules of one comparison: better / worse when the 1 - alpha interval
excludes 0, equivalent when the 1 - 2 alpha interval lies inside +-sesoi, else inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ablate.stats.verdict import BETTER, BETTER_SMALL, EQUIVALENT, INCONCLUSIVE, WORSE, WORSE_SMALL

MIN_TASKS = 2  # a pooled interval needs two tasks (t with k - 1 df); a prediction interval three
#: how the pooled interval is formed (the harness compares them; the report uses ``HKSJ_FLOOR``)
HKSJ_FLOOR, HKSJ, NORMAL = "hksj, floor 1", "hksj", "normal"


@dataclass(frozen=True)
class Pooled:
    """The pooled effect of one arm over ``k`` tasks, with its intervals and heterogeneity."""

    k: int
    mean: float
    se: float  # of the pooled mean, as the interval uses it
    df: float
    lo: float
    hi: float
    lo90: float
    hi90: float
    p: float
    tau2: float
    i2: float  # share of the spread of the task effects beyond their within-task error (0-1)
    pred_lo: float  # where a new task's true effect lies (nan with fewer than 3 tasks)
    pred_hi: float
    verdict: str
    p_adj: float = math.nan


def pool(
    effects: Sequence[float], ses: Sequence[float], *, sesoi: float, alpha: float = 0.05,
    higher_is_better: bool = True, method: str = HKSJ_FLOOR,
) -> Pooled:  # fmt: skip
    """Pool per-task paired effects ``effects`` with standard errors ``ses``."""
    from statsmodels.stats.meta_analysis import combine_effects

    y = np.asarray(effects, dtype=float)
    s = np.asarray(ses, dtype=float)
    k = len(y)
    if k < MIN_TASKS or not np.isfinite(y).all() or not np.isfinite(s).all():
        nan = math.nan
        return Pooled(
            k,
            float(y.mean()) if k else nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            INCONCLUSIVE,
        )
    # a task whose two arms agree on every item has se 0: floor it so its weight stays finite
    v = np.maximum(s**2, 1e-12)
    with np.errstate(all="ignore"):  # I^2 of identical effects divides 0 by 0: read as 0 below
        res = combine_effects(y, v, method_re="iterated", use_t=True)
    mean, tau2 = float(res.mean_effect_re), max(0.0, float(res.tau2))
    if method == NORMAL:
        se, df = math.sqrt(res.var_eff_w_re), math.inf
    else:
        scale = float(res.scale_hksj_re)
        se = math.sqrt(res.var_eff_w_re * (max(scale, 1.0) if method == HKSJ_FLOOR else scale))
        df = k - 1.0
    q = stats.t.ppf(1 - alpha / 2, df) if math.isfinite(df) else stats.norm.ppf(1 - alpha / 2)
    q90 = stats.t.ppf(1 - alpha, df) if math.isfinite(df) else stats.norm.ppf(1 - alpha)
    p = (
        float(2 * (stats.t.sf(abs(mean) / se, df) if math.isfinite(df) else stats.norm.sf(abs(mean) / se)))
        if se > 0
        else float(mean == 0)
    )
    if k >= 3:
        half = stats.t.ppf(1 - alpha / 2, k - 2) * math.sqrt(tau2 + res.var_eff_w_re)
        pred = (mean - half, mean + half)
    else:
        pred = (math.nan, math.nan)
    lo, hi, lo90, hi90 = mean - q * se, mean + q * se, mean - q90 * se, mean + q90 * se
    i2 = max(0.0, float(res.i2)) if math.isfinite(res.i2) else 0.0
    verdict = word(mean, lo, hi, lo90, hi90, sesoi, higher_is_better)
    return Pooled(k, mean, se, df, lo, hi, lo90, hi90, p, tau2, i2, *pred, verdict)


def word(
    mean: float, lo: float, hi: float, lo90: float, hi90: float, sesoi: float, higher_is_better: bool
) -> str:
    """The verdict of one comparison from its intervals (``ablate.stats.verdict``'s rules)."""
    if not all(map(math.isfinite, (lo, hi, lo90, hi90))):
        return INCONCLUSIVE
    equivalent = -sesoi < lo90 and hi90 < sesoi
    if lo > 0 or hi < 0:
        good = (mean > 0) == higher_is_better
        if equivalent:
            return BETTER_SMALL if good else WORSE_SMALL
        return BETTER if good else WORSE
    return EQUIVALENT if equivalent else INCONCLUSIVE
