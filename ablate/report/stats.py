"""Paired, two-way statistics for "arm vs baseline": seeds and test items are both sampled.

A comparison starts from two aligned ``(S seeds, I test items)`` matrices, one per
arm: row ``s`` is replicate seed ``s`` in both arms, column ``i`` is the same test
item in every row and both arms (items are *crossed* with seeds, not nested). All
inference is on ``D = arm - base``:

- :func:`two_way_bootstrap` resamples seeds and items independently (Owen's
  "pigeonhole" bootstrap), so a verdict holds up both to another draw of seeds
  and to another draw of test items;
- :func:`variance_parts` splits the variance of ``D`` into seed, item and residual
  components (two-way random-effects ANOVA), from which the minimum detectable
  difference and the number of seeds that would settle an inconclusive
  comparison are derived;
- :func:`compare` turns one pair of matrices into a :class:`Comparison` with
  exactly one verdict (better / worse / equivalent / inconclusive);
- :func:`holm_family` applies Holm's adjustment over the primary family, fixed
  before the data is seen.

"No difference" is only ever claimed by an equivalence test (bootstrap TOST
within ``±sesoi``); otherwise the verdict is "inconclusive".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

OK, NO_DATA, ONE_SEED, DEGENERATE = "ok", "no_data", "one_seed", "degenerate"
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"

HIGHER_IS_BETTER = {"em": True, "loss": False}
FLOAT_TOL = 1e-10  # relative to the data's scale: spreads below this are rounding, not variation
MAX_SEEDS = 10_000  # seeds_needed beyond this is reported as None
POWER_DETECT = 0.8  # power to detect the observed difference (two-sided test at alpha)
POWER_TOST = 0.9  # power of the equivalence test (two one-sided tests at alpha)

NOTE_DEGENERATE_ZERO = (
    "every test item scored the same in both arms on every seed: no sampling variation to estimate"
)
NOTE_DEGENERATE_CONST = (
    "the arm-minus-baseline difference is the same on every test item and every seed: "
    "no sampling variation to estimate"
)
NOTE_ONE_SEED = (
    "only one seed is present in both arms: the interval covers test-item sampling only, and the "
    "seed-to-seed variance is unknown, so the detectable difference and seeds needed are lower bounds"
)
NOTE_NO_DATA = "no seed with test scores in both arms: nothing to compare"


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Bootstrap:
    """Two-way bootstrap of a mean: point estimate, percentile interval, p of ``mean == 0``, se.

    ``dist`` is the bootstrap distribution (kept for :meth:`tost_p`; not shown, not compared).
    """

    mean: float
    lo: float
    hi: float
    p: float
    se: float
    dist: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    def tost_p(self, margin: float) -> float:
        """Bootstrap TOST p of ``|mean| >= margin``: the larger one-sided p vs ``-margin`` and ``+margin``.

        ``tost_p < alpha`` when the percentile ``1 - 2 alpha`` interval lies inside
        ``(-margin, +margin)`` (up to how the quantiles are interpolated).
        """
        n = len(self.dist)
        if n == 0:
            return math.nan
        p_low = np.count_nonzero(self.dist <= -margin) / n  # H0: mean <= -margin
        p_high = np.count_nonzero(self.dist >= margin) / n  # H0: mean >= +margin
        return float(min(1.0, max(p_low, p_high, 1.0 / (n + 1))))


_NAN_BOOT = Bootstrap(math.nan, math.nan, math.nan, math.nan, math.nan)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (seeds, items) matrix, got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite entries: pass only seeds and items scored in both arms")
    return a


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` resamples of ``range(n)`` with replacement, as multinomial counts (one row per resample)."""
    picks = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(float)


def two_way_bootstrap(
    d: np.ndarray, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> Bootstrap:
    """Pigeonhole bootstrap (Owen 2007) of the mean of the ``(S, I)`` matrix ``d``.

    Each replicate resamples rows (seeds) and columns (items) independently with
    replacement; the same column resample applies to every row, so pairing by seed
    and by item is kept. With ``S == 1`` only items are resampled. A constant ``d``
    gives the point itself as its interval (the caller marks that case degenerate).
    """
    d = _as_matrix(d, "d")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("need n_resamples >= 1 and 0 < confidence < 1")
    if d.size == 0:
        return _NAN_BOOT
    n_seeds, n_items = d.shape
    mean = float(d.mean())
    if np.ptp(d) == 0:  # every replicate is the mean itself; skip the float noise of recomputing it
        dist = np.full(n_resamples, mean)
    else:
        # Hand-written: scipy.stats.bootstrap resamples one axis (or paired samples), not two crossed axes.
        # Multinomial counts are the resample as weights: stat_b = w_rows_b @ d @ w_cols_b / (S * I).
        rng = np.random.default_rng(seed)
        chunk = max(1, 2_000_000 // max(n_seeds, n_items))
        parts = []
        for start in range(0, n_resamples, chunk):
            c = min(chunk, n_resamples - start)
            w_rows, w_cols = _counts(rng, n_seeds, c), _counts(rng, n_items, c)
            parts.append(np.einsum("bi,bi->b", w_rows @ d, w_cols) / (n_seeds * n_items))
        dist = np.concatenate(parts)
    dist.setflags(write=False)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(dist, [tail, 1 - tail])
    n = len(dist)
    p_two = 2 * min(np.count_nonzero(dist <= 0), np.count_nonzero(dist >= 0)) / n
    p = min(1.0, max(p_two, 1.0 / (n + 1)))
    return Bootstrap(mean, float(lo), float(hi), float(p), float(dist.std(ddof=1)) if n > 1 else 0.0, dist)


def interval(
    x: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Bootstrap:
    """One arm's mean over its ``(S, I)`` matrix with the same two-way bootstrap (nan when empty)."""
    return two_way_bootstrap(x, n_resamples=n_resamples, confidence=confidence, seed=seed)


# --------------------------------------------------------------------------- variance components


@dataclass(frozen=True)
class VarianceParts:
    """Seed, item and residual (seed x item) variance components of ``D``.

    ``seed`` is nan when only one seed was run (not identified from the data).
    """

    seed: float
    item: float
    resid: float

    def var_of_mean(self, n_seeds: int, n_items: int) -> float:
        """Variance of the grand mean of an ``n_seeds x n_items`` crossed design."""
        if n_seeds < 1 or n_items < 1:
            raise ValueError("need at least one seed and one item")
        return self.seed / n_seeds + self.item / n_items + self.resid / (n_seeds * n_items)


def variance_parts(d: np.ndarray) -> VarianceParts:
    """Two-way random-effects ANOVA of ``d`` by the method of moments, negative components clipped to 0.

    Written out because statsmodels' ``anova_lm``/``MixedLM`` give mean squares or
    REML fits of one grouping factor, not these crossed moment estimators directly.
    With one seed the seed component is nan and the item component is the variance
    of the item means; with one item the seed component is the variance of the rows.
    """
    d = _as_matrix(d, "d")
    if d.size == 0:
        raise ValueError("d is empty")
    n_seeds, n_items = d.shape
    grand = d.mean()
    row, col = d.mean(axis=1), d.mean(axis=0)
    if n_seeds == 1:
        item = float(np.var(col, ddof=1)) if n_items > 1 else math.nan
        return VarianceParts(seed=math.nan, item=item, resid=0.0)
    if n_items == 1:
        return VarianceParts(seed=float(np.var(row, ddof=1)), item=0.0, resid=0.0)
    ms_seed = n_items * np.sum((row - grand) ** 2) / (n_seeds - 1)
    ms_item = n_seeds * np.sum((col - grand) ** 2) / (n_items - 1)
    resid = d - row[:, None] - col[None, :] + grand
    ms_res = np.sum(resid**2) / ((n_seeds - 1) * (n_items - 1))
    return VarianceParts(
        seed=float(max(0.0, (ms_seed - ms_res) / n_items)),
        item=float(max(0.0, (ms_item - ms_res) / n_seeds)),
        resid=float(ms_res),
    )


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """``arm - base`` on one metric, with exactly one verdict.

    ``seeds_needed`` is set only for an inconclusive verdict: the total number of
    seeds (at the current number of items) at which the comparison would likely be
    settled. ``None`` there with ``more_items_needed`` means no number of seeds
    would do because the item term alone is too large; ``None`` without it means
    more than ``MAX_SEEDS`` seeds. ``variance`` holds the components behind ``mde``
    and ``seeds_needed`` (``None`` when there is no data).
    """

    metric: str
    higher_is_better: bool
    n_seeds: int
    n_items: int
    diff: float
    lo: float
    hi: float
    p: float
    p_seed: float
    hedges_g: float
    mde: float
    tost_p: float
    sesoi: float
    seeds_needed: int | None
    more_items_needed: bool
    status: str
    verdict: str
    p_adj: float = math.nan
    primary: bool = False
    note: str = ""
    variance: VarianceParts | None = None


def _planning_parts(parts: VarianceParts) -> VarianceParts:
    """With one seed the seed component is unknown: plan with 0 there, i.e. a lower bound."""
    return dataclasses.replace(parts, seed=0.0) if math.isnan(parts.seed) else parts


def _calibrated(parts: VarianceParts, se: float, n_seeds: int, n_items: int) -> VarianceParts:
    """Planning variance that equals the verdict's own bootstrap variance at the current design.

    The pigeonhole bootstrap does not reproduce the ANOVA variance exactly (it counts the
    seed x item interaction about three times and the seed term (S-1)/S times, Owen 2007),
    so planning with the ANOVA parts would promise verdicts the bootstrap cannot give. Keep
    the item term, which more seeds cannot shrink, and put the rest of ``se**2`` on the
    per-seed term: ``var(N) = A/N + item/I`` with ``var(S) == se**2``.
    """
    fixed = min(parts.item / n_items, se**2)
    return VarianceParts(seed=n_seeds * (se**2 - fixed), item=fixed * n_items, resid=0.0)


def _mde(parts: VarianceParts, n_seeds: int, n_items: int, alpha: float) -> float:
    """Minimum detectable |diff| at 80% power, normal approximation.

    z rather than t quantiles because the verdict comes from the bootstrap (a normal-
    like reference), and because the seed and item terms have no single t degree of
    freedom; for a seed-only design it matches ``TTestPower`` once seeds are many.
    """
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER_DETECT)
    return float(z * math.sqrt(_planning_parts(parts).var_of_mean(n_seeds, n_items)))


def _seeds_needed(
    parts: VarianceParts, diff: float, sesoi: float, n_items: int, alpha: float
) -> tuple[int | None, bool]:
    """Smallest number of seeds that settles the comparison; ``(None, True)`` if items are the bottleneck.

    Closed form of the smallest ``N`` with ``z * sqrt(var_of_mean(N, I)) <= target``: the
    detection power of the observed ``|diff|`` when it reaches ``sesoi``, otherwise the
    power of TOST with room ``sesoi - |diff|``.
    """
    parts = _planning_parts(parts)
    if abs(diff) >= sesoi:
        z, target = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER_DETECT), abs(diff)
    else:
        z, target = stats.norm.ppf(1 - alpha) + stats.norm.ppf(POWER_TOST), sesoi - abs(diff)
    budget = (target / z) ** 2  # allowed variance of the mean
    fixed = parts.item / n_items  # does not shrink with more seeds
    per_seed = parts.seed + parts.resid / n_items  # divided by N
    if fixed >= budget:
        return None, fixed > 0
    # Hand-written: TTestPower has one variance term; here only seed/N and resid/(N I) shrink with N.
    ratio = per_seed / (budget - fixed)
    if ratio > MAX_SEEDS:
        return None, False
    n = max(2, math.ceil(ratio))
    while n > 2 and parts.var_of_mean(n - 1, n_items) <= budget:  # guard the ceil against rounding
        n -= 1
    while parts.var_of_mean(n, n_items) > budget:
        n += 1
    return (n, False) if n <= MAX_SEEDS else (None, False)


def _decide(c: Comparison, p: float, alpha: float) -> tuple[str, int | None, bool]:
    """Verdict from ``p`` (raw or Holm-adjusted) and the TOST p, plus the seeds plan if inconclusive."""
    if c.status == NO_DATA or c.variance is None:
        return INCONCLUSIVE, None, False
    improved = c.diff > 0 if c.higher_is_better else c.diff < 0
    if p < alpha and c.diff != 0:
        return (BETTER if improved else WORSE), None, False
    if c.tost_p < alpha:
        return EQUIVALENT, None, False
    needed, more_items = _seeds_needed(c.variance, c.diff, c.sesoi, c.n_items, alpha)
    return INCONCLUSIVE, needed, more_items


def _hedges_g(per_seed: np.ndarray, tol: float = 0.0) -> float:
    """Hedges' g_z of the per-seed differences (nan below 3 seeds: J = 0 at one degree of freedom)."""
    n = len(per_seed)
    if n < 3 or np.ptp(per_seed) <= tol:
        return math.nan
    sd = float(np.std(per_seed, ddof=1))
    if sd == 0:
        return math.nan
    # Hand-written: scipy/statsmodels have no Hedges' g; J is the usual small-sample correction.
    return float(per_seed.mean() / sd * (1 - 3 / (4 * (n - 1) - 1)))


def compare(
    arm: np.ndarray,
    base: np.ndarray,
    *,
    metric: str,
    sesoi: float,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Compare ``arm`` with ``base`` (aligned ``(seeds, items)`` matrices) on ``metric`` ("em" or "loss").

    ``sesoi`` is the smallest effect of interest in the metric's units (the
    equivalence margin). The verdict uses the unadjusted two-way bootstrap p; use
    :func:`holm_family` for the primary family.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    if not (math.isfinite(sesoi) and sesoi >= 0) or not 0 < alpha < 0.5:
        raise ValueError("need a finite sesoi >= 0 and 0 < alpha < 0.5")
    a, b = _as_matrix(arm, "arm"), _as_matrix(base, "base")
    if a.shape != b.shape:
        raise ValueError(f"arm {a.shape} and base {b.shape} are not aligned (seeds, items) matrices")
    n_seeds, n_items = a.shape
    common = {"metric": metric, "higher_is_better": HIGHER_IS_BETTER[metric], "sesoi": float(sesoi)}
    common |= {"n_seeds": n_seeds, "n_items": n_items}
    if a.size == 0:
        nan = math.nan
        return Comparison(
            **common,
            diff=nan,
            lo=nan,
            hi=nan,
            p=nan,
            p_seed=nan,
            hedges_g=nan,
            mde=nan,
            tost_p=nan,
            seeds_needed=None,
            more_items_needed=False,
            status=NO_DATA,
            verdict=INCONCLUSIVE,
            note=NOTE_NO_DATA,
        )

    d = a - b
    # Rounding of a - b (e.g. base + 0.05 - base) must not pass for sampling variation.
    tol = FLOAT_TOL * max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    per_seed = d.mean(axis=1)
    p_seed = math.nan
    if n_seeds >= 2 and np.ptp(per_seed) > tol:
        # per_seed is arm's per-seed mean minus base's (the pairs ttest_rel would difference)
        p_seed = float(stats.ttest_rel(per_seed, np.zeros(n_seeds)).pvalue)

    if np.ptp(d) <= tol:
        status = DEGENERATE
        diff = float(d.mean())
        diff = 0.0 if abs(diff) <= tol else diff
        note = NOTE_DEGENERATE_ZERO if diff == 0 else NOTE_DEGENERATE_CONST
        if n_seeds == 1:
            note += " (and only one seed was run)"
        lo = hi = diff
        p = 0.0 if diff != 0 else 1.0
        tost_p = 0.0 if abs(diff) < sesoi else 1.0
        parts = VarianceParts(seed=0.0 if n_seeds > 1 else math.nan, item=0.0, resid=0.0)
    else:
        boot = two_way_bootstrap(d, n_resamples=n_resamples, confidence=1 - alpha, seed=seed)
        diff, lo, hi, p, tost_p = boot.mean, boot.lo, boot.hi, boot.p, boot.tost_p(sesoi)
        parts = _calibrated(variance_parts(d), boot.se, n_seeds, n_items)
        status, note = (ONE_SEED, NOTE_ONE_SEED) if n_seeds == 1 else (OK, "")

    c = Comparison(
        **common,
        diff=diff,
        lo=lo,
        hi=hi,
        p=p,
        p_seed=p_seed,
        hedges_g=_hedges_g(per_seed, tol),
        mde=_mde(parts, n_seeds, n_items, alpha),
        tost_p=tost_p,
        seeds_needed=None,
        more_items_needed=False,
        status=status,
        verdict=INCONCLUSIVE,
        note=note,
        variance=parts,
    )
    verdict, needed, more_items = _decide(c, p, alpha)
    return dataclasses.replace(c, verdict=verdict, seeds_needed=needed, more_items_needed=more_items)


def holm_family(
    comps: dict[str, Comparison], primary: Sequence[str], alpha: float = 0.05
) -> dict[str, Comparison]:
    """Holm-adjust the primary family and recompute its verdicts from ``p_adj``.

    The family is exactly ``primary`` (fixed before the data is seen): a primary
    comparison without data, or missing from ``comps``, counts as p = 1, so the family
    never shrinks. Non-primary comparisons come back with ``p_adj = nan`` and their
    unadjusted verdict. The equivalence (TOST) p and the seeds-needed plan are not
    adjusted; a primary comparison without data keeps ``p_adj = nan``.
    """
    names = list(primary)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate names in the primary family: {names}")
    out = {k: dataclasses.replace(c, p_adj=math.nan, primary=False) for k, c in comps.items()}
    if not names:
        return out
    raw = [comps[n].p if n in comps and not math.isnan(comps[n].p) else 1.0 for n in names]
    p_adj = multipletests(raw, alpha=alpha, method="holm")[1]
    for name, q in zip(names, p_adj, strict=True):
        if name not in comps:
            continue
        c = comps[name]
        q = math.nan if c.status == NO_DATA else float(q)
        verdict, needed, more_items = _decide(c, q, alpha)
        out[name] = dataclasses.replace(
            c, p_adj=q, primary=True, verdict=verdict, seeds_needed=needed, more_items_needed=more_items
        )
    return out


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
