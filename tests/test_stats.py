"""Numbers, not "it ran": the two-way bootstrap, variance components, verdicts and Holm's family."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from ablate.report import stats

Z80 = st.norm.ppf(0.975) + st.norm.ppf(0.8)  # two-sided alpha = 0.05 at 80% power


def _brute_seeds_needed(c: stats.Comparison, alpha: float = 0.05) -> tuple[int | None, bool]:
    """The planning rule, by a plain loop over N (no closed form)."""
    vp = c.variance
    seed = 0.0 if math.isnan(vp.seed) else vp.seed
    vom = lambda n: seed / n + vp.item / c.n_items + vp.resid / (n * c.n_items)  # noqa: E731
    if abs(c.diff) >= c.sesoi:
        z, target = Z80, abs(c.diff)
    else:
        z, target = st.norm.ppf(1 - alpha) + st.norm.ppf(0.9), c.sesoi - abs(c.diff)
    for n in range(2, 10_001):
        if z * math.sqrt(vom(n)) <= target:
            return n, False
    return None, z * math.sqrt(vp.item / c.n_items) > target


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_centred_on_the_mean():
    d = np.array([[0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0, 0.0]])
    a = stats.two_way_bootstrap(d, n_resamples=2000, seed=7)
    b = stats.two_way_bootstrap(d, n_resamples=2000, seed=7)
    other = stats.two_way_bootstrap(d, n_resamples=2000, seed=8)
    assert a == b and np.array_equal(a.dist, b.dist)
    assert not np.array_equal(a.dist, other.dist)
    assert a.mean == pytest.approx(d.mean()) and a.lo < a.mean < a.hi
    assert a.se == pytest.approx(np.std(a.dist, ddof=1))
    p_two = 2 * min(np.mean(a.dist <= 0), np.mean(a.dist >= 0))
    assert a.p == pytest.approx(min(1.0, max(p_two, 1 / 2001)))


def test_bootstrap_of_a_constant_is_the_point():
    b = stats.two_way_bootstrap(np.full((3, 4), 0.25), n_resamples=999)
    assert (b.mean, b.lo, b.hi, b.se) == (0.25, 0.25, 0.25, 0.0)
    assert b.p == pytest.approx(1 / 1000)  # floored at 1 / (n + 1)


def test_bootstrap_se_matches_the_variance_components():
    # S=5 seeds, I=400 items with known seed (sd 0.05), item (sd 1.0) and residual (sd 0.3) effects.
    rng = np.random.default_rng(1)
    n_seeds, n_items = 5, 400
    d = (
        0.05 * rng.normal(size=(n_seeds, 1))
        + rng.normal(size=(1, n_items))
        + 0.3 * rng.normal(size=(n_seeds, n_items))
    )
    boot = stats.two_way_bootstrap(d, n_resamples=10_000, seed=0)
    vp = stats.variance_parts(d)
    assert boot.se == pytest.approx(math.sqrt(vp.var_of_mean(n_seeds, n_items)), rel=0.10)
    # Exact variance of the pigeonhole bootstrap given d (plug-in, ddof=0 components):
    # rows/S + cols/I + interaction/(S I); the Monte Carlo error of the se at n=10k is ~0.7%.
    g = d.mean()
    r, c = d.mean(axis=1) - g, d.mean(axis=0) - g
    e = d - g - r[:, None] - c[None, :]
    exact = (r**2).mean() / n_seeds + (c**2).mean() / n_items + (e**2).mean() / (n_seeds * n_items)
    assert boot.se == pytest.approx(math.sqrt(exact), rel=0.03)


def test_one_item_reduces_to_a_seed_bootstrap():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 1))
    arm = base + 0.3 + 0.5 * rng.normal(size=(30, 1))
    d = (arm - base)[:, 0]
    ours = stats.two_way_bootstrap(arm - base, n_resamples=10_000, seed=0)
    ref = st.bootstrap(
        (d,), np.mean, method="percentile", n_resamples=10_000, rng=np.random.default_rng(1)
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(ours.lo - ref.low) < 0.05 * width and abs(ours.hi - ref.high) < 0.05 * width
    assert ours.se == pytest.approx(np.std(d, ddof=0) / math.sqrt(30), rel=0.05)

    c = stats.compare(arm, base, metric="em", sesoi=0.02)
    assert c.p_seed == pytest.approx(st.ttest_rel(arm[:, 0], base[:, 0]).pvalue, rel=1e-9)
    vp = c.variance
    # planning parts: all of the bootstrap variance is per seed (one item: nothing fixed)
    assert (vp.item, vp.resid) == (0.0, 0.0) and vp.seed == pytest.approx(30 * ours.se**2, rel=0.02)
    assert vp.seed == pytest.approx(np.var(d, ddof=1), rel=0.1)


def test_interval_of_one_arm():
    rng = np.random.default_rng(4)
    x = (rng.random((3, 100)) < 0.6).astype(float)
    iv = stats.interval(x, n_resamples=2000)
    assert iv.mean == pytest.approx(x.mean()) and iv.lo < iv.mean < iv.hi
    assert math.isnan(stats.interval(np.empty((0, 100))).mean)


# --------------------------------------------------------------------------- variance components


def test_variance_parts_by_hand():
    d = np.array([[1.0, 3.0, 2.0, 6.0], [2.0, 5.0, 2.0, 7.0], [0.0, 4.0, 5.0, 9.0]])
    n_s, n_i = d.shape
    grand = sum(sum(row) for row in d.tolist()) / (n_s * n_i)
    row = [sum(d[s, i] for i in range(n_i)) / n_i for s in range(n_s)]
    col = [sum(d[s, i] for s in range(n_s)) / n_s for i in range(n_i)]
    ms_s = n_i * sum((row[s] - grand) ** 2 for s in range(n_s)) / (n_s - 1)
    ms_i = n_s * sum((col[i] - grand) ** 2 for i in range(n_i)) / (n_i - 1)
    ss_r = sum((d[s, i] - row[s] - col[i] + grand) ** 2 for s in range(n_s) for i in range(n_i))
    ms_r = ss_r / ((n_s - 1) * (n_i - 1))
    vp = stats.variance_parts(d)
    assert vp.seed == pytest.approx(max(0.0, (ms_s - ms_r) / n_i))
    assert vp.item == pytest.approx(max(0.0, (ms_i - ms_r) / n_s))
    assert vp.resid == pytest.approx(ms_r)
    # On paper: grand mean 23/6, row means 3, 4, 9/2, column means 1, 4, 3, 22/3, so
    # MS_seed = 7/3, MS_item = 21, MS_res = 5/3 and the components are 1/6, 58/9, 5/3.
    assert (ms_s, ms_i, ms_r) == pytest.approx((7 / 3, 21.0, 5 / 3))
    assert (vp.seed, vp.item, vp.resid) == pytest.approx((1 / 6, 58 / 9, 5 / 3))
    assert vp.var_of_mean(2, 8) == pytest.approx(vp.seed / 2 + vp.item / 8 + vp.resid / 16)


def test_variance_parts_edge_shapes():
    one_seed = stats.variance_parts(np.array([[1.0, 2.0, 4.0]]))
    assert math.isnan(one_seed.seed) and one_seed.resid == 0.0
    assert one_seed.item == pytest.approx(np.var([1.0, 2.0, 4.0], ddof=1))
    one_item = stats.variance_parts(np.array([[1.0], [2.0], [4.0]]))
    assert one_item.item == 0.0 and one_item.resid == 0.0
    assert one_item.seed == pytest.approx(np.var([1.0, 2.0, 4.0], ddof=1))
    # negative moment estimates are clipped: pure noise with no seed effect
    noise = stats.variance_parts(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert noise.seed == 0.0 and noise.item == 0.0 and noise.resid == pytest.approx(4.0)


# --------------------------------------------------------------------------- effect size, power


def test_hedges_g_by_hand_and_mde_closed_form():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(5, 3))
    arm = base + rng.normal(0.4, 0.3, size=(5, 1)) + 0.1 * rng.normal(size=(5, 3))
    c = stats.compare(arm, base, metric="loss", sesoi=0.05, n_resamples=2000)
    per_seed = [sum(arm[s, i] - base[s, i] for i in range(3)) / 3 for s in range(5)]
    m = sum(per_seed) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in per_seed) / 4)
    assert c.hedges_g == pytest.approx(m / sd * (1 - 3 / (4 * 4 - 1)))
    # planning is calibrated to the bootstrap: at the current design its variance is the bootstrap's
    boot = stats.two_way_bootstrap(arm - base, n_resamples=2000, confidence=0.95)
    assert c.variance.var_of_mean(5, 3) == pytest.approx(boot.se**2)
    assert c.mde == pytest.approx(Z80 * math.sqrt(c.variance.var_of_mean(5, 3)))
    # two seeds: J = 1 - 3/(4*1-1) = 0, which would report g = 0 for any effect -> nan instead
    assert math.isnan(stats.compare(arm[:2], base[:2], metric="loss", sesoi=0.05, n_resamples=200).hedges_g)


def test_mde_agrees_with_ttestpower_for_many_seeds():
    # Seed-only design (I == 1): var_of_mean = sd^2 / S, and the normal approximation used for mde
    # matches statsmodels' t-based power once S is large (t_199 quantiles are within 1% of z).
    rng = np.random.default_rng(6)
    base = rng.normal(size=(200, 1))
    arm = base + rng.normal(0.0, 0.2, size=(200, 1))
    c = stats.compare(arm, base, metric="loss", sesoi=0.05, n_resamples=1000)
    sd = np.std(arm - base, ddof=1)
    effect = TTestPower().solve_power(nobs=200, alpha=0.05, power=0.8, alternative="two-sided")
    assert c.mde == pytest.approx(effect * sd, rel=0.02)


# --------------------------------------------------------------------------- equivalence


def test_tost_inside_and_straddling_the_margin():
    rng = np.random.default_rng(7)
    base = rng.normal(size=(10, 500))
    inside = stats.compare(base + 0.001 + 0.05 * rng.normal(size=(10, 500)), base, metric="loss", sesoi=0.02)
    assert inside.verdict == stats.EQUIVALENT and inside.tost_p < 0.05
    straddle = stats.compare(base + 0.01 + 0.5 * rng.normal(size=(10, 500)), base, metric="loss", sesoi=0.02)
    assert straddle.lo < 0.02 < straddle.hi and straddle.tost_p > 0.05
    assert straddle.verdict == stats.INCONCLUSIVE


@pytest.mark.parametrize("sd, equivalent", [(0.05, True), (0.4, False)])
def test_tost_agrees_with_statsmodels_ttost_paired(sd: float, equivalent: bool):
    rng = np.random.default_rng(8)
    base = rng.normal(size=(200, 1))
    arm = base + rng.normal(0.0, sd, size=(200, 1))
    c = stats.compare(arm, base, metric="em", sesoi=0.02, n_resamples=4000)
    p_ref = ttost_paired(arm[:, 0], base[:, 0], -0.02, 0.02)[0]
    assert (c.tost_p < 0.05) == (p_ref < 0.05) == equivalent
    assert (c.verdict == stats.EQUIVALENT) == equivalent


# --------------------------------------------------------------------------- Holm


def _fixed(p: float, diff: float = 0.05, status: str = stats.OK, tost_p: float = 0.5) -> stats.Comparison:
    return stats.Comparison(
        metric="em",
        higher_is_better=True,
        n_seeds=3,
        n_items=200,
        diff=diff,
        lo=math.nan,
        hi=math.nan,
        p=p,
        p_seed=math.nan,
        hedges_g=math.nan,
        mde=math.nan,
        tost_p=tost_p,
        sesoi=0.02,
        seeds_needed=None,
        more_items_needed=False,
        status=status,
        verdict=stats.BETTER if p < 0.05 else stats.INCONCLUSIVE,
        variance=stats.VarianceParts(seed=1e-4, item=0.01, resid=0.2),
    )


def test_holm_family_matches_multipletests_and_keeps_its_size():
    comps = {
        "a": _fixed(0.01),
        "b": _fixed(0.04),
        "c": _fixed(0.03, diff=-0.05),
        "d": dataclasses.replace(_fixed(math.nan), status=stats.NO_DATA, diff=math.nan),
        "e": _fixed(0.001),  # not primary
    }
    out = stats.holm_family(comps, ["a", "b", "c", "d"])
    expected = multipletests([0.01, 0.04, 0.03, 1.0], alpha=0.05, method="holm")[1]
    assert [out[k].p_adj for k in "abc"] == pytest.approx(list(expected[:3]))
    assert [out[k].p_adj for k in "abc"] == pytest.approx(
        [0.04, 0.09, 0.09]
    )  # by hand: 4p, 3p, max(2p, 0.09)
    assert math.isnan(out["d"].p_adj) and out["d"].verdict == stats.INCONCLUSIVE
    assert all(out[k].primary for k in "abcd") and not out["e"].primary and math.isnan(out["e"].p_adj)
    assert out["a"].verdict == stats.BETTER
    assert out["b"].verdict == stats.INCONCLUSIVE and out["b"].seeds_needed is not None
    assert (out["b"].seeds_needed, out["b"].more_items_needed) == _brute_seeds_needed(out["b"])
    assert out["e"] == comps["e"]
    # the family never shrinks: a primary name without any comparison also counts as p = 1
    missing = stats.holm_family({k: comps[k] for k in "abce"}, ["a", "b", "c", "d"])
    assert [missing[k].p_adj for k in "abc"] == [out[k].p_adj for k in "abc"] and "d" not in missing


# --------------------------------------------------------------------------- synthetic verdicts


def _em_pair(
    shift: float, n_seeds: int = 3, n_items: int = 200, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices; the arm solves an item whenever the baseline does plus ``shift`` more often."""
    rng = np.random.default_rng(seed)
    p_item = rng.uniform(0.2, 0.7, size=n_items)
    u = rng.random((n_seeds, n_items))  # shared draw: both arms mostly agree item by item
    return (u < p_item + shift).astype(float), (u < p_item).astype(float)


def _balanced_flips() -> tuple[np.ndarray, np.ndarray]:
    """Arms differ on 5 items each way per seed (10 seeds x 500 items): mean difference exactly 0."""
    rng = np.random.default_rng(9)
    base = (rng.random((10, 500)) < 0.5).astype(float)
    arm = base.copy()
    for s in range(10):
        for value in (0.0, 1.0):
            flip = rng.choice(np.flatnonzero(base[s] == value), size=5, replace=False)
            arm[s, flip] = 1 - value
    return arm, base


def _noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10)
    return (rng.random((2, 40)) < 0.5).astype(float), (rng.random((2, 40)) < 0.5).astype(float)


def _seed_flat() -> tuple[np.ndarray, np.ndarray]:
    """Every row of D identical (no seed spread), items vary."""
    rng = np.random.default_rng(11)
    base = rng.normal(1.0, 0.2, size=(4, 60))
    return base + rng.normal(0.0, 0.05, size=(1, 60)), base


def _loss_pair(shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    base = rng.normal(1.5, 0.3, size=(3, 100))
    return base + shift + 0.02 * rng.normal(size=(3, 100)), base


_E = _em_pair(0.0)[1]
CASES = {
    # name: ((arm, base), metric, sesoi, verdict, status)
    "em +10 points": (_em_pair(0.10), "em", 0.02, stats.BETTER, stats.OK),
    "em -10 points": (_em_pair(-0.10), "em", 0.02, stats.WORSE, stats.OK),
    "loss lower": (_loss_pair(-0.1), "loss", 0.01, stats.BETTER, stats.OK),
    "loss higher": (_loss_pair(0.1), "loss", 0.01, stats.WORSE, stats.OK),
    "identical arms": ((_E.copy(), _E), "em", 0.02, stats.EQUIVALENT, stats.DEGENERATE),
    "constant loss shift": ((_E + 0.05, _E), "loss", 0.01, stats.WORSE, stats.DEGENERATE),
    "balanced flips": (_balanced_flips(), "em", 0.02, stats.EQUIVALENT, stats.OK),
    "noisy 2x40": (_noisy_pair(), "em", 0.02, stats.INCONCLUSIVE, stats.OK),
    "no seed spread": (_seed_flat(), "loss", 0.001, stats.INCONCLUSIVE, stats.OK),
    "one seed": (_em_pair(0.10, n_seeds=1, n_items=400), "em", 0.02, stats.BETTER, stats.ONE_SEED),
    "no data": ((np.empty((0, 40)), np.empty((0, 40))), "em", 0.02, stats.INCONCLUSIVE, stats.NO_DATA),
}


@pytest.mark.parametrize("name", list(CASES))
def test_verdicts(name: str):
    (arm, base), metric, sesoi, verdict, status = CASES[name]
    c = stats.compare(arm, base, metric=metric, sesoi=sesoi, n_resamples=4000)
    assert (c.verdict, c.status) == (verdict, status)
    assert (c.note != "") == (status != stats.OK)
    if status == stats.NO_DATA:
        assert math.isnan(c.diff) and c.seeds_needed is None
        return
    assert c.diff == pytest.approx((arm - base).mean())
    if verdict == stats.INCONCLUSIVE:
        assert (c.seeds_needed, c.more_items_needed) == _brute_seeds_needed(c)
        assert c.seeds_needed is not None or c.more_items_needed
    else:
        assert c.seeds_needed is None and not c.more_items_needed
    if status == stats.DEGENERATE:
        assert c.lo == c.hi == c.diff and c.p == (0.0 if c.diff else 1.0)
    else:
        assert c.lo < c.hi


def test_verdict_details():
    noisy = stats.compare(*_noisy_pair(), metric="em", sesoi=0.02, n_resamples=4000)
    assert (isinstance(noisy.seeds_needed, int) and noisy.seeds_needed > 2) or noisy.more_items_needed
    flat = stats.compare(*_seed_flat(), metric="loss", sesoi=0.001, n_resamples=4000)
    assert (
        flat.variance.seed == pytest.approx(0.0, abs=1e-20) and flat.lo < flat.hi and math.isnan(flat.p_seed)
    )
    one = stats.compare(*_em_pair(0.10, n_seeds=1, n_items=400), metric="em", sesoi=0.02, n_resamples=4000)
    assert "seed-to-seed variance is unknown" in one.note and math.isnan(one.p_seed)
    same = stats.compare(_E.copy(), _E, metric="em", sesoi=0.02)
    assert "every test item scored the same in both arms" in same.note


def test_seeds_needed_and_more_items_needed():
    # seed-dominated: more seeds settle it
    rng = np.random.default_rng(13)
    base = rng.normal(size=(3, 1000))
    arm = base + rng.normal(0.03, 0.04, size=(3, 1)) + 0.01 * rng.normal(size=(3, 1000))
    c = stats.compare(arm, base, metric="loss", sesoi=0.01, n_resamples=4000)
    assert c.verdict == stats.INCONCLUSIVE and isinstance(c.seeds_needed, int) and c.seeds_needed > 3
    assert (c.seeds_needed, c.more_items_needed) == _brute_seeds_needed(c)
    # item-dominated with 20 items: no number of seeds can settle a 0.01 difference
    items = rng.normal(0.0, 1.0, size=(1, 20))
    d = np.repeat(items - items.mean() + 0.01, 3, axis=0)
    c = stats.compare(d, np.zeros_like(d), metric="em", sesoi=0.02, n_resamples=4000)
    assert c.verdict == stats.INCONCLUSIVE and c.seeds_needed is None and c.more_items_needed


def test_bad_input_raises():
    with pytest.raises(ValueError):
        stats.compare(np.zeros((3, 10)), np.zeros((2, 10)), metric="em", sesoi=0.02)
    with pytest.raises(ValueError):
        stats.compare(np.zeros((3, 10)), np.zeros((3, 10)), metric="accuracy", sesoi=0.02)
    with pytest.raises(ValueError):
        stats.compare(np.full((3, 10), np.nan), np.zeros((3, 10)), metric="em", sesoi=0.02)


def test_module_imports_no_torch_or_transformers():
    tree = ast.parse(Path(stats.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {
        "__future__",
        "dataclasses",
        "math",
        "collections",
        "numpy",
        "scipy",
        "statsmodels",
        "pandas",
    }
