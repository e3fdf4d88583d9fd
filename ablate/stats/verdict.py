"""One verdict per comparison: better / worse / equivalent / inconclusive, and the seeds plan.

All inference is on ``D = arm - base``, an aligned ``(seeds, items)`` matrix (row ``s`` is
replicate seed ``s`` in both arms, column ``i`` the same test item), through the crossed
t interval of :mod:`ablate.stats.anova`:

- **better / worse**: the two-sided t test rejects ``D == 0`` at ``alpha`` (Holm-adjusted
  over the primary family by :func:`holm_family`);
- **better / worse, within ±sesoi**: significant, *and* the equivalence test shows the
  difference is smaller than ``sesoi``: real but too small to matter;
- **equivalent**: two one-sided t tests (TOST) reject ``|D| >= sesoi`` at ``alpha``, i.e. the
  ``1 - 2 alpha`` (90%) interval lies inside ``±sesoi``; "no difference" is never claimed
  any other way;
- **inconclusive**: neither, with the number of seeds that would likely settle it, planned
  on ``sesoi`` (never on the observed difference) at the family's worst-case Holm level.

No decisive verdict is drawn from fewer than ``MIN_SEEDS`` seeds, from per-seed means
without per-item scores, or from two arms that agree on every item and seed (both at the
floor or the ceiling, or simply identical): the note says why in words. The error rates
these rules give are measured by :mod:`ablate.stats.simulate`, not assumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ablate.stats.anova import MeanEstimate, VarianceParts, estimate, satterthwaite

# statuses: whether a comparison can be decided, and if not, why
OK, CONSTANT = "ok", "constant"  # decidable (CONSTANT: D is one nonzero value everywhere)
NO_DATA, TOO_FEW_SEEDS, NO_ITEMS = "no_data", "too_few_seeds", "no_items"
FLOOR, CEILING, NO_VARIATION = "floor", "ceiling", "no_variation"
DECIDABLE = (OK, CONSTANT)

BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
BETTER_SMALL, WORSE_SMALL = "better within sesoi", "worse within sesoi"
VERDICTS = (BETTER, BETTER_SMALL, EQUIVALENT, WORSE_SMALL, WORSE, INCONCLUSIVE)

HIGHER_IS_BETTER = {"em": True, "loss": False}
MIN_SEEDS = 3  # below this a lucky run cannot be told from a better method (measured: simulate.py)
FLOAT_TOL = 1e-10  # relative to the data's scale: spreads below this are rounding, not variation
POWER = 0.8  # the seeds plan: 80% to call a true ±sesoi, and 80% to show equivalence at a true 0
MAX_SEEDS = 1_000  # a plan beyond this is no plan: "more than 1,000 seeds"


def note_for(status: str, n_seeds: int) -> str:
    """Why a comparison is not decided, in words a reader can act on ("" when it can be)."""
    return {
        NO_DATA: "no seed has test scores in both arms: nothing to compare",
        TOO_FEW_SEEDS: f"{n_seeds} seed(s): too few to separate a better method from a lucky run "
        f"(a verdict needs at least {MIN_SEEDS})",
        NO_ITEMS: "no per-item scores were recorded, so the interval cannot cover another draw of "
        "test items: no verdict",
        FLOOR: "both arms score 0 on every item: the task cannot tell them apart",
        CEILING: "both arms score 1 on every item: the task cannot tell them apart",
        NO_VARIATION: "the two arms scored the same on every item and seed: there is no variation "
        "to estimate from, so neither a difference nor equivalence can be shown",
        CONSTANT: "the difference is the same on every item and seed (no sampling variation)",
    }.get(status, "")


@dataclass(frozen=True)
class Comparison:
    """``arm - base`` on one metric, with exactly one verdict.

    ``lo``/``hi``: the ``1 - alpha`` t interval (the test's); ``lo90``/``hi90``: the ``1 - 2 alpha``
    interval that decides equivalence (TOST). ``seeds_needed`` is set only for an inconclusive
    verdict that more seeds could settle; ``more_items_needed`` when the item term alone is too
    large; ``plan_note`` says in words what the plan promises or why there is none.
    """

    metric: str
    higher_is_better: bool
    n_seeds: int
    n_items: int
    diff: float
    se: float
    df: float
    lo: float
    hi: float
    lo90: float
    hi90: float
    p: float
    tost_p: float
    p_seed: float
    hedges_g: float
    mde: float
    sesoi: float
    alpha: float
    status: str
    verdict: str = INCONCLUSIVE
    seeds_needed: int | None = None
    more_items_needed: bool = False
    plan_note: str = ""
    p_adj: float = math.nan
    primary: bool = False
    note: str = ""
    variance: VarianceParts | None = None
    #: seeds=auto: the level of the repeated confidence interval in ``lo``/``hi`` (that of the look
    #: the comparison stopped at; nan: ``1 - alpha``), and the design's account of the stop
    ci_level: float = math.nan
    sequential: str = ""

    @property
    def decided(self) -> bool:
        return self.verdict != INCONCLUSIVE


# --------------------------------------------------------------------------- planning


PLAN_DRAWS = 64  # equal-probability draws of the seed mean square behind an assurance plan


def _powers(
    parts: VarianceParts, seeds: np.ndarray, n_items: int, sesoi: float, alpha: float, f_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expected power (assurance) at each total number of seeds in ``seeds``: to call a true
    ``±sesoi`` (two-sided t at ``alpha``) and to show equivalence at a true 0 (TOST at ``alpha``).

    The seed component was estimated from ``f_seed + 1`` seeds, i.e. from a mean square with
    ``f_seed`` degrees of freedom; a plan on that point estimate promised 80% and delivered
    24-72% in the harness (a seed term that came out small promises too much). So the power is
    averaged over the seed mean square's sampling uncertainty (``MS f / chi2_f`` at
    ``PLAN_DRAWS`` equal-probability quantiles); item and residual terms, estimated from
    hundreds of degrees of freedom, are held at their estimates.
    """
    seed = 0.0 if math.isnan(parts.seed) else parts.seed
    item = 0.0 if math.isnan(parts.item) else parts.item
    resid = parts.resid
    n = np.asarray(seeds, dtype=float)[None, :]
    if f_seed >= 1:
        q = (np.arange(PLAN_DRAWS) + 0.5) / PLAN_DRAWS
        ms_seed = (n_items * seed + resid) * f_seed / stats.chi2.ppf(q, f_seed)
        seed_draws = np.maximum(ms_seed - resid, 0.0)[:, None] / n_items
    else:
        seed_draws = np.array([[seed]])
    var, df = satterthwaite(n_items * seed_draws + resid, n * item + resid, resid, n, n_items)
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncp = np.where(se > 0, sesoi / np.where(se > 0, se, 1.0), 1e6)
    t2 = stats.t.ppf(1 - alpha / 2, df)
    detect = stats.nct.sf(t2, df, np.minimum(ncp, 1e6))
    t1 = stats.t.ppf(1 - alpha, df)
    equiv = np.where(ncp > t1, 2 * stats.t.cdf(ncp - t1, df) - 1, 0.0)
    return detect.mean(axis=0), equiv.mean(axis=0)


def plan_seeds(
    parts: VarianceParts, n_seeds: int, n_items: int, sesoi: float, alpha: float
) -> tuple[int | None, bool, str]:
    """Smallest total number of seeds (at ``n_items`` items) with an expected ``POWER`` both to
    call a true difference of ``±sesoi`` and to show equivalence when there is none, at ``alpha``.

    Returns ``(seeds, more_items_needed, note)``. Planned on ``sesoi``, not on the observed
    difference (post-hoc power), and averaged over the uncertainty of the seed term
    (:func:`_powers`); ``ablate.stats.simulate.measure_plan`` checks that topping up to the
    plan reaches a decision at the promised rate.
    """
    if sesoi <= 0:
        return None, False, "no plan: sesoi is 0, so equivalence can never be shown"
    f_seed = n_seeds - 1
    start = max(n_seeds, MIN_SEEDS)
    no_seed = VarianceParts(0.0, parts.item, parts.resid)  # infinitely many seeds: the item term alone
    d_inf, e_inf = _powers(no_seed, np.array([10**9]), n_items, sesoi, alpha, 0)
    if d_inf[0] < POWER or e_inf[0] < POWER:
        return (
            None,
            True,
            (
                f"no number of seeds would do: the spread over the {n_items} test items alone is too "
                "large for this sesoi; raise the number of test items"
            ),
        )

    def enough(n: int) -> bool:
        detect, equiv = _powers(parts, np.array([n]), n_items, sesoi, alpha, f_seed)
        return bool(detect[0] >= POWER and equiv[0] >= POWER)

    if not enough(MAX_SEEDS):
        return None, False, f"more than {MAX_SEEDS:,} seeds"
    lo, hi = start, MAX_SEEDS  # power grows with the seeds: the smallest enough N by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    n = lo
    return (
        n,
        False,
        (
            f"about {n} seeds in all would give at least {POWER:.0%} power to call a true difference of "
            f"±{100 * sesoi:.1f} points and to show equivalence when there is none (at alpha={alpha:.3g}, "
            "averaged over the uncertainty of this study's seed variance; in the calibration harness such "
            "plans delivered 82-99%, the most where test items, not seeds, limit the verdict)"
        ),
    )


# --------------------------------------------------------------------------- comparison


def _hedges_g(per_seed: np.ndarray, tol: float) -> float:
    """Hedges' g_z of the per-seed differences (nan below 3 seeds: J = 0 at one degree of freedom)."""
    n = len(per_seed)
    if n < 3 or np.ptp(per_seed) <= tol:
        return math.nan
    # Hand-written: scipy/statsmodels have no Hedges' g; J is the usual small-sample correction.
    return float(per_seed.mean() / np.std(per_seed, ddof=1) * (1 - 3 / (4 * (n - 1) - 1)))


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (seeds, items) matrix, got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite entries: pass only seeds and items scored in both arms")
    return a


def _status(a: np.ndarray, b: np.ndarray, d: np.ndarray, metric: str, tol: float) -> str:
    n_seeds, n_items = d.shape
    if d.size == 0:
        return NO_DATA
    if np.ptp(d) <= tol:
        if abs(float(d.mean())) > tol:
            status = CONSTANT
        elif metric == "em" and a.max() == 0 and b.max() == 0:
            return FLOOR
        elif metric == "em" and a.min() == 1 and b.min() == 1:
            return CEILING
        else:
            return NO_VARIATION
    else:
        status = OK
    if n_items == 1:
        return NO_ITEMS
    if n_seeds < MIN_SEEDS:
        return TOO_FEW_SEEDS
    return status


def decide(c: Comparison, p: float, plan_alpha: float) -> Comparison:
    """``c`` with its verdict from ``p`` (raw or Holm-adjusted) and its TOST p, and the plan."""
    verdict, needed, more, plan = INCONCLUSIVE, None, False, ""
    if c.status in DECIDABLE:
        improved = c.diff > 0 if c.higher_is_better else c.diff < 0
        significant = p < c.alpha and c.diff != 0
        equivalent = c.tost_p < c.alpha
        if significant:
            verdict = (
                (BETTER_SMALL if equivalent else BETTER)
                if improved
                else (WORSE_SMALL if equivalent else WORSE)
            )
        elif equivalent:
            verdict = EQUIVALENT
    if verdict == INCONCLUSIVE and c.variance is not None and c.status in (OK, TOO_FEW_SEEDS):
        needed, more, plan = plan_seeds(c.variance, c.n_seeds, c.n_items, c.sesoi, plan_alpha)
        if c.status == TOO_FEW_SEEDS:  # 1-2 seeds' variance components are no basis for a number
            needed, plan = None, f"run at least {MIN_SEEDS} seeds before a seeds plan can be made"
    return dataclasses.replace(
        c, verdict=verdict, seeds_needed=needed, more_items_needed=more, plan_note=plan
    )


def compare(
    arm: np.ndarray,
    base: np.ndarray,
    *,
    metric: str,
    sesoi: float,
    alpha: float = 0.05,
) -> Comparison:
    """Compare ``arm`` with ``base``: aligned ``(seeds, items)`` matrices of per-item scores
    (``metric`` "em": 0/1 exact matches, higher is better; "loss": lower is better).

    ``sesoi`` is the smallest effect of interest in the metric's units (the equivalence
    margin). The verdict uses the unadjusted p; :func:`holm_family` adjusts a primary family.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    if not (math.isfinite(sesoi) and sesoi >= 0) or not 0 < alpha < 0.5:
        raise ValueError("need a finite sesoi >= 0 and 0 < alpha < 0.5")
    a, b = _as_matrix(arm, "arm"), _as_matrix(base, "base")
    if a.shape != b.shape:
        raise ValueError(f"arm {a.shape} and base {b.shape} are not aligned (seeds, items) matrices")
    n_seeds, n_items = a.shape
    d = a - b
    # Rounding of a - b (e.g. base + 0.05 - base) must not pass for sampling variation.
    tol = FLOAT_TOL * max(1.0, float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)))
    status = _status(a, b, d, metric, tol)
    nan = math.nan
    common = dict(
        metric=metric, higher_is_better=HIGHER_IS_BETTER[metric], n_seeds=n_seeds, n_items=n_items,
        sesoi=float(sesoi), alpha=float(alpha), status=status, note=note_for(status, n_seeds),
    )  # fmt: skip
    if status == NO_DATA:
        return Comparison(
            **common, diff=nan, se=nan, df=nan, lo=nan, hi=nan, lo90=nan, hi90=nan, p=nan,
            tost_p=nan, p_seed=nan, hedges_g=nan, mde=nan,
        )  # fmt: skip
    if np.ptp(d) <= tol:  # no variation: the point is its own interval
        diff = float(d.mean())
        diff = 0.0 if abs(diff) <= tol else diff
        zero = VarianceParts(0.0 if n_seeds > 1 else nan, 0.0 if n_items > 1 else nan, 0.0)
        est = MeanEstimate(diff, 0.0, math.inf, zero, n_seeds, n_items)
    else:
        est = estimate(d)
    lo, hi = est.interval(1 - alpha)
    lo90, hi90 = est.interval(1 - 2 * alpha)
    per_seed = d.mean(axis=1)
    p_seed = nan
    if n_seeds >= 2 and np.ptp(per_seed) > tol:
        p_seed = float(stats.ttest_1samp(per_seed, 0.0).pvalue)
    mde = nan
    if est.se > 0 and math.isfinite(est.df):
        mde = float((stats.t.ppf(1 - alpha / 2, est.df) + stats.t.ppf(POWER, est.df)) * est.se)
    c = Comparison(
        **common, diff=est.mean, se=est.se, df=est.df, lo=lo, hi=hi, lo90=lo90, hi90=hi90,
        p=est.p_two_sided(), tost_p=est.p_tost(sesoi), p_seed=p_seed, hedges_g=_hedges_g(per_seed, tol),
        mde=mde, variance=est.parts,
    )  # fmt: skip
    return decide(c, c.p, alpha)


def holm_family(comps: dict[str, Comparison], primary: Sequence[str]) -> dict[str, Comparison]:
    """Holm-adjust the primary family and recompute its verdicts from ``p_adj``.

    The family is exactly ``primary`` (fixed before the data is seen): a member that cannot be
    decided (no data, too few seeds, ...) or is missing enters with p = 1, so the family never
    shrinks. Its seeds plan uses ``alpha / m``, Holm's strictest step, so the plan holds whatever
    the other members' p-values turn out to be. Non-primary comparisons come back with
    ``p_adj = nan`` and their unadjusted verdict. The equivalence test is not adjusted (TOST
    claims are intersection-union tests, each at ``alpha``).
    """
    names = list(primary)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate names in the primary family: {names}")
    out = {k: dataclasses.replace(c, p_adj=math.nan, primary=False) for k, c in comps.items()}
    if not names:
        return out
    raw = [
        comps[n].p if n in comps and comps[n].status in DECIDABLE and not math.isnan(comps[n].p) else 1.0
        for n in names
    ]
    p_adj = multipletests(raw, method="holm")[1]
    for name, q in zip(names, p_adj, strict=True):
        if name not in comps:
            continue
        c = comps[name]
        q = math.nan if c.status == NO_DATA else float(q)
        c = dataclasses.replace(c, p_adj=q, primary=True)
        out[name] = decide(c, 1.0 if math.isnan(q) else q, c.alpha / len(names))
    return out


def interval(x: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """One arm's mean over its ``(S, I)`` matrix with the crossed t interval: ``(mean, lo, hi)``
    (nan when empty)."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if np.ptp(x) == 0 or x.size == 1:
        m = float(x.mean())
        return m, m, m
    est = estimate(x)
    return (est.mean, *est.interval(confidence))


def contrast(d: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Any per-item contrast matrix (e.g. an interaction): ``(mean, lo, hi, p of mean == 0)``."""
    d = _as_matrix(d, "d")
    if d.size == 0:
        return (math.nan,) * 4
    if np.ptp(d) == 0:
        m = float(d.mean())
        return m, m, m, (1.0 if m == 0 else 0.0)
    est = estimate(d)
    return (est.mean, *est.interval(confidence), est.p_two_sided())
