"""Numbers, not "it ran": the crossed variance, t intervals against hand calculations and scipy,
verdicts and refusals, Holm's family, the seeds plan, and the calibration harness's slice."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from ablate import stats
from ablate.stats import anova, simulate, verdict

# --------------------------------------------------------------------------- crossed variance


def test_estimate_by_hand():
    x = np.array([[1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 1.0, 3.0, 0.0]])
    s_, i_ = x.shape
    g = x.mean()
    ms_s = i_ * ((x.mean(1) - g) ** 2).sum() / (s_ - 1)
    ms_i = s_ * ((x.mean(0) - g) ** 2).sum() / (i_ - 1)
    r = x - x.mean(1)[:, None] - x.mean(0)[None, :] + g
    ms_r = (r**2).sum() / ((s_ - 1) * (i_ - 1))
    est = stats.estimate(x)
    ms_s_c, ms_i_c = max(ms_s, ms_r), max(ms_i, ms_r)
    assert est.se**2 == pytest.approx((ms_s_c + ms_i_c - ms_r) / (s_ * i_))
    up = ms_s_c * (s_ - 1) / st.chi2.ppf(anova.DF_GUARD, s_ - 1)
    df = (up + ms_i_c - ms_r) ** 2 / (
        up**2 / (s_ - 1) + ms_i_c**2 / (i_ - 1) + ms_r**2 / ((s_ - 1) * (i_ - 1))
    )
    assert est.df == pytest.approx(df)
    assert est.parts == stats.VarianceParts(
        seed=max(0.0, (ms_s - ms_r) / i_), item=max(0.0, (ms_i - ms_r) / s_), resid=pytest.approx(ms_r)
    )
    lo, hi = est.interval(0.95)
    assert (hi - lo) / 2 == pytest.approx(st.t.ppf(0.975, df) * est.se)


def test_seed_only_and_item_only_reduce_to_one_sample_t():
    rng = np.random.default_rng(0)
    seeds = rng.normal(0.1, 0.05, size=5)
    d = np.repeat(seeds[:, None], 40, axis=1)  # every item equal within a seed: seeds alone vary
    est = stats.estimate(d)
    ci = st.ttest_1samp(seeds, 0.0).confidence_interval(0.95)
    assert est.df == pytest.approx(4) and est.interval(0.95) == pytest.approx((ci.low, ci.high))
    items = rng.normal(0.1, 0.3, size=30)
    d = np.repeat(items[None, :], 4, axis=0)  # every seed identical: items alone vary
    est = stats.estimate(d)
    ci = st.ttest_1samp(items, 0.0).confidence_interval(0.95)
    assert est.df == pytest.approx(29) and est.interval(0.95) == pytest.approx((ci.low, ci.high))
    # TOST on the seed-only design agrees with statsmodels' paired TOST over seed means
    base = rng.normal(0.5, 0.1, size=5)
    arm = base + rng.normal(0.001, 0.004, size=5)
    c = stats.compare(
        np.repeat(arm[:, None], 20, 1), np.repeat(base[:, None], 20, 1), metric="loss", sesoi=0.01
    )
    assert c.tost_p == pytest.approx(ttost_paired(arm, base, -0.01, 0.01)[0])


def test_edge_shapes():
    one_seed = stats.estimate(np.array([[0.0, 1.0, 1.0, 0.0, 1.0]]))
    assert math.isnan(one_seed.parts.seed) and one_seed.df == 4
    one_item = stats.estimate(np.array([[0.2], [0.4], [0.3]]))
    assert math.isnan(one_item.parts.item) and one_item.df == 2
    assert one_item.se == pytest.approx(np.std([0.2, 0.4, 0.3], ddof=1) / math.sqrt(3))
    with pytest.raises(ValueError):
        stats.estimate(np.empty((0, 3)))


# --------------------------------------------------------------------------- verdicts


def _em_pair(shift: float, n_seeds: int = 5, n_items: int = 400, seed: int = 0):
    """0/1 matrices; the arm solves an item whenever the baseline does plus ``shift`` more often."""
    rng = np.random.default_rng(seed)
    p_item = rng.uniform(0.2, 0.7, size=n_items)
    u = rng.random((n_seeds, n_items))  # shared draw: both arms mostly agree item by item
    return (u < p_item + shift).astype(float), (u < p_item).astype(float)


def _balanced_flips():
    """Arms differ on 2 items each way per seed (10 seeds x 2000 items): mean difference exactly 0."""
    rng = np.random.default_rng(9)
    base = (rng.random((10, 2000)) < 0.5).astype(float)
    arm = base.copy()
    for s in range(10):
        for value in (0.0, 1.0):
            flip = rng.choice(np.flatnonzero(base[s] == value), size=2, replace=False)
            arm[s, flip] = 1 - value
    return arm, base


def _small_real():
    """A real loss difference of 0.003 nats, measured very precisely, against sesoi 0.02."""
    rng = np.random.default_rng(12)
    base = rng.normal(1.5, 0.3, size=(6, 500))
    return base - 0.003 + 0.002 * rng.normal(size=(6, 500)), base


_E = _em_pair(0.0)[1]
_Z = np.zeros((4, 50))
CASES = {
    # name: ((arm, base), metric, sesoi, verdict, status)
    "em +15 points": (_em_pair(0.15), "em", 0.02, stats.BETTER, stats.OK),
    "em -15 points": (_em_pair(-0.15), "em", 0.02, stats.WORSE, stats.OK),
    "constant loss drop": (
        (_small_real()[1] - 0.1, _small_real()[1]),
        "loss",
        0.01,
        stats.BETTER,
        stats.CONSTANT,
    ),
    "real but negligible": (_small_real(), "loss", 0.02, stats.BETTER_SMALL, stats.OK),
    "balanced flips": (_balanced_flips(), "em", 0.02, stats.EQUIVALENT, stats.OK),
    "identical arms": ((_E.copy(), _E), "em", 0.02, stats.INCONCLUSIVE, stats.NO_VARIATION),
    "both at the floor": ((_Z.copy(), _Z), "em", 0.02, stats.INCONCLUSIVE, stats.FLOOR),
    "both at the ceiling": ((_Z + 1, _Z + 1), "em", 0.02, stats.INCONCLUSIVE, stats.CEILING),
    "two seeds": (_em_pair(0.15, n_seeds=2), "em", 0.02, stats.INCONCLUSIVE, stats.TOO_FEW_SEEDS),
    "seed means only": (
        tuple(m.mean(axis=1, keepdims=True) for m in _em_pair(0.15)),
        "em",
        0.02,
        stats.INCONCLUSIVE,
        stats.NO_ITEMS,
    ),  # fmt: skip
    "no data": ((np.empty((0, 40)), np.empty((0, 40))), "em", 0.02, stats.INCONCLUSIVE, stats.NO_DATA),
}


@pytest.mark.parametrize("name", list(CASES))
def test_verdicts(name: str):
    (arm, base), metric, sesoi, expected, status = CASES[name]
    c = stats.compare(arm, base, metric=metric, sesoi=sesoi)
    assert (c.verdict, c.status) == (expected, status)
    assert (c.note != "") == (status != stats.OK)
    if status == stats.NO_DATA:
        assert math.isnan(c.diff) and c.seeds_needed is None
        return
    assert c.diff == pytest.approx((arm - base).mean())
    if status not in stats.DECIDABLE:
        assert c.seeds_needed is None
    if status in (stats.OK, stats.TOO_FEW_SEEDS, stats.NO_ITEMS):
        assert c.lo < c.lo90 < c.diff < c.hi90 < c.hi  # the 95% test interval holds the 90% TOST one
    if expected in (stats.EQUIVALENT, stats.BETTER_SMALL):
        assert -sesoi < c.lo90 and c.hi90 < sesoi


def test_refusals_say_why_in_words():
    assert "2 seed(s): too few to separate a better method from a lucky run" in CASES_NOTE("two seeds")
    assert "both arms score 0 on every item: the task cannot tell them apart" in CASES_NOTE(
        "both at the floor"
    )
    assert "no per-item scores" in CASES_NOTE("seed means only")


def CASES_NOTE(name: str) -> str:  # noqa: N802
    (arm, base), metric, sesoi, _, _ = CASES[name]
    return stats.compare(arm, base, metric=metric, sesoi=sesoi).note


def test_holm_family_matches_multipletests_and_keeps_its_size():
    pairs = {f"a{k}": _em_pair(shift, seed=k) for k, shift in enumerate((0.15, 0.04, 0.0))}
    comps = {k: stats.compare(a, b, metric="em", sesoi=0.02) for k, (a, b) in pairs.items()}
    comps["short"] = stats.compare(*_em_pair(0.3, n_seeds=2), metric="em", sesoi=0.02)
    fam = stats.holm_family(comps, ["a0", "a1", "a2", "short", "missing"])
    raw = [comps[k].p for k in ("a0", "a1", "a2")] + [1.0, 1.0]  # undecidable and missing count as p=1
    adj = multipletests(raw, method="holm")[1]
    for k, q in zip(("a0", "a1", "a2"), adj, strict=False):
        assert fam[k].p_adj == pytest.approx(q) and fam[k].primary
        assert fam[k].verdict != stats.BETTER or q < 0.05
    assert fam["short"].verdict == stats.INCONCLUSIVE
    with pytest.raises(ValueError):
        stats.holm_family(comps, ["a0", "a0"])


# --------------------------------------------------------------------------- the seeds plan


def test_plan_is_the_smallest_n_with_the_promised_power():
    parts = stats.VarianceParts(seed=0.002, item=0.01, resid=0.2)
    n, more, note = stats.plan_seeds(parts, 3, 2000, 0.02, 0.05)
    assert isinstance(n, int) and n > 3 and not more and f"about {n} seeds" in note
    det, eq = verdict._powers(parts, np.array([n - 1, n]), 2000, 0.02, 0.05, 2)
    assert min(det[1], eq[1]) >= stats.POWER > min(det[0], eq[0])
    # planned at the family's alpha / m: never fewer seeds than at alpha
    assert stats.plan_seeds(parts, 3, 2000, 0.02, 0.05 / 3)[0] >= n
    # the item term alone is too large: no number of seeds, raise the test set
    n, more, note = stats.plan_seeds(stats.VarianceParts(0.0, 0.2, 0.2), 3, 64, 0.02, 0.05)
    assert n is None and more and "raise the number of test items" in note


def test_an_inconclusive_comparison_carries_a_plan():
    r = simulate.REGIMES["moderate"]
    rng = np.random.default_rng(3)
    y = simulate.draw_seeds(r, simulate.draw_items(r, 1, 2, 2000, rng), np.array([0.0, 0.05]), 3, rng)[0]
    arm, base = y[1], y[0]
    c = stats.compare(arm, base, metric="em", sesoi=0.02)
    assert c.verdict == stats.INCONCLUSIVE and c.status == stats.OK
    assert (c.seeds_needed, c.more_items_needed, c.plan_note) == stats.plan_seeds(
        c.variance, 3, 2000, 0.02, 0.05
    )


def test_bad_input_raises():
    with pytest.raises(ValueError):
        stats.compare(np.zeros((3, 10)), np.zeros((2, 10)), metric="em", sesoi=0.02)
    with pytest.raises(ValueError):
        stats.compare(np.zeros((3, 10)), np.zeros((3, 10)), metric="accuracy", sesoi=0.02)
    with pytest.raises(ValueError):
        stats.compare(np.full((3, 10), np.nan), np.zeros((3, 10)), metric="em", sesoi=0.02)


def test_package_imports_no_torch_or_transformers():
    allowed = {"__future__", "dataclasses", "functools", "math", "typing", "collections", "numpy", "scipy"}
    allowed |= {"statsmodels", "ablate"}
    for path in Path(stats.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        }
        assert imported <= allowed, (path.name, imported - allowed)


# --------------------------------------------------------------------------- calibration slice


def test_the_harness_truth_is_exact():
    r = simulate.REGIMES["moderate"]
    for effect in (-0.04, 0.02):
        delta = simulate.delta_for(r, effect)
        assert simulate.population_mean(r, delta) - simulate.population_mean(r, 0.0) == pytest.approx(effect)
    # the seed-dominated regime is what SmolLM2 runs of 30 steps show: about 5.6 points per seed
    assert simulate.per_seed_sd(simulate.REGIMES["seed-dominated"]) == pytest.approx(0.056, abs=0.006)


def test_vectorised_calls_match_compare_draw_by_draw():
    r = simulate.REGIMES["moderate"]
    rng = np.random.default_rng(5)
    items = simulate.draw_items(r, 40, 2, 100, rng)
    y = simulate.draw_seeds(r, items, np.array([0.0, 0.3]), 3, rng)
    calls = simulate.anova_calls(y[:, 1] - y[:, 0], 0.02, 0.05)
    for k in range(40):
        c = stats.compare(y[k, 1], y[k, 0], metric="em", sesoi=0.02)
        assert (c.lo, c.hi) == pytest.approx((calls.lo[k], calls.hi[k]))
        assert calls.better[k] == (c.verdict in (stats.BETTER, stats.BETTER_SMALL))
        assert calls.worse[k] == (c.verdict in (stats.WORSE, stats.WORSE_SMALL))


SLICE = [(r, s, i) for r in simulate.REGIMES for s in (3, 5) for i in (64, 400)]


@pytest.mark.parametrize("regime,n_seeds,n_items", SLICE)
def test_calibration_slice_within_bounds(regime: str, n_seeds: int, n_items: int):
    """Identical arms: the 95% interval covers the truth at least 93% of the time and false
    better/worse stays at or below 6% (600 seeded draws per cell; the full grid is
    benchmarks/calibration.py)."""
    m = simulate.measure(simulate.REGIMES[regime], 0.0, n_seeds, n_items, n_reps=600, seed=42)
    assert m["coverage"] >= 0.93 and m["better"] + m["worse"] <= 0.06, m


def test_the_harness_catches_the_old_bootstrap():
    """The slice can fail: the bootstrap the report used before covers far less than 95% when
    whole runs differ, and the harness says so."""
    m = simulate.measure(
        simulate.REGIMES["seed-dominated"], 0.0, 3, 2000, n_reps=200, method="bootstrap (old)"
    )
    assert m["coverage"] < 0.8 and m["better"] + m["worse"] > 0.2, m


def test_search_repeats_cover_the_choice_of_configuration():
    """study.search_repeats: where the configuration a search picks moves the arm (config sd 0.3,
    about 4-5 EM points), the report's interval (each search one row) covers the effect averaged
    over searches at the nominal rate; the same seeds spent on one search's best do not."""
    m = simulate.measure_search(simulate.REGIMES["moderate"], 0.3, 3, 2, 200, 0.0, n_reps=400, seed=3)
    assert m["coverage/repeats"] >= 0.93 and m["false/repeats"] <= 0.06, m
    assert m["coverage/one search"] < 0.8 and m["coverage/pooled seeds"] < 0.93, m


def test_pooled_effect_over_tasks_by_hand():
    """Three tasks with equal within-task variance v: Paule-Mandel tau^2 = var(y) - v, the mean is
    the plain mean, HKSJ's scale is 1 (tau^2 > 0), the interval is t with k - 1 = 2 df, and the
    prediction interval t with k - 2 = 1 df on tau^2 + the mean's variance."""
    from ablate.stats import meta

    y, v = np.array([0.01, 0.05, 0.09]), 0.0002
    tau2 = np.var(y, ddof=1) - v  # 0.0016 - 0.0002
    var_mean = (v + tau2) / 3
    p = meta.pool(y, [math.sqrt(v)] * 3, sesoi=0.02)
    assert p.tau2 == pytest.approx(tau2, rel=1e-4) and p.mean == pytest.approx(0.05)
    half = st.t.ppf(0.975, 2) * math.sqrt(var_mean)
    assert (p.lo, p.hi) == pytest.approx((0.05 - half, 0.05 + half), rel=1e-3)
    pred = st.t.ppf(0.975, 1) * math.sqrt(tau2 + var_mean)
    assert (p.pred_lo, p.pred_hi) == pytest.approx((0.05 - pred, 0.05 + pred), rel=1e-3)
    assert p.i2 == pytest.approx(1 - 2 / (np.sum((y - 0.05) ** 2) / v), rel=1e-6)
    assert p.verdict == stats.INCONCLUSIVE  # 0.05 +- 0.097 spans 0
    # identical effects: tau^2 = 0, and the floor keeps HKSJ's scale (0 here) at 1
    q = meta.pool([0.03, 0.03, 0.03], [0.005] * 3, sesoi=0.02)
    half = st.t.ppf(0.975, 2) * math.sqrt(0.005**2 / 3)
    assert q.tau2 == 0 and (q.lo, q.hi) == pytest.approx((0.03 - half, 0.03 + half))
    assert q.verdict == stats.BETTER and q.i2 == 0


@pytest.mark.parametrize("tau", [0.0, 0.04])
def test_pooled_interval_covers_the_mean_task_effect(tau: float):
    """The harness's slice: 5 tasks (3 seeds x 200 items each), true task effects N(0, tau^2)."""
    from ablate.stats import meta

    m = simulate.measure_meta(simulate.REGIMES["moderate"], 0.0, tau, 5, 3, 200, n_reps=300, seed=5)
    assert m[f"coverage/{meta.HKSJ_FLOOR}"] >= 0.93 and m[f"false/{meta.HKSJ_FLOOR}"] <= 0.06, m


def test_family_wise_false_verdicts_after_holm():
    rate = simulate.measure_family(simulate.REGIMES["seed-dominated"], 3, 3, 200, n_reps=300, seed=1)
    assert rate <= 0.06


# --------------------------------------------------------------------------- interference


def test_interference_interval_by_hand():
    """Fisher-z difference and its delete-one-seed jackknife, written out for 3 seeds."""
    from ablate.stats import similarity

    with_x = {1: 0.90, 2: 0.80, 3: 0.95}
    reseed = {(1, 2): 0.50, (1, 3): 0.60, (2, 3): 0.40}
    z = math.atanh
    full = (z(0.90) + z(0.80) + z(0.95)) / 3 - (z(0.50) + z(0.60) + z(0.40)) / 3
    loo = [  # leave seed 1, 2, 3 out: two with-X cosines, one reseed pair left
        (z(0.80) + z(0.95)) / 2 - z(0.40),
        (z(0.90) + z(0.95)) / 2 - z(0.60),
        (z(0.90) + z(0.80)) / 2 - z(0.50),
    ]
    mean = sum(loo) / 3
    se = math.sqrt(2 / 3 * sum((v - mean) ** 2 for v in loo))
    half = st.t.ppf(0.975, 2) * se
    r = similarity.interference(with_x, reseed)
    assert (r.n_seeds, r.diff, r.lo, r.hi) == pytest.approx((3, full, full - half, full + half))
    assert r.cos_with_x == pytest.approx(math.tanh((z(0.90) + z(0.80) + z(0.95)) / 3))
    assert r.reading == (similarity.LESS if full - half > 0 else similarity.SAME)
    # keys as the storage gives them back (strings) read the same
    again = similarity.interference(
        {str(k): v for k, v in with_x.items()}, {(str(a), str(b)): c for (a, b), c in reseed.items()}
    )
    assert again == r


def test_interference_refuses_an_interval_it_cannot_give():
    from ablate.stats import similarity

    two = similarity.interference({1: 0.9, 2: 0.8}, {(1, 2): 0.5})
    assert two.reading == similarity.FEW and two.n_seeds == 2 and math.isnan(two.lo)
    assert two.diff == pytest.approx((math.atanh(0.9) + math.atanh(0.8)) / 2 - math.atanh(0.5))
    # seed 4's reseed pairs are missing (its run failed): it is dropped, the other three stay complete
    gap = similarity.interference({1: 0.9, 2: 0.8, 3: 0.95, 4: 0.7}, {(1, 2): 0.5, (1, 3): 0.6, (2, 3): 0.4})
    assert gap == similarity.interference({1: 0.9, 2: 0.8, 3: 0.95}, {(1, 2): 0.5, (1, 3): 0.6, (2, 3): 0.4})
    # X that leaves LoRA exactly in place (cos = 1) gives a finite, decided reading
    same = similarity.interference({1: 1.0, 2: 1.0, 3: 1.0}, {(1, 2): 0.5, (1, 3): 0.6, (2, 3): 0.4})
    assert math.isfinite(same.diff) and same.reading == similarity.LESS


INTERFERENCE_SLICE = [("null", 0.3, 1.0), ("null", 1.0, 0.5), ("strong", 0.3, 0.5), ("pulls", 1.0, 1.0)]


@pytest.mark.parametrize("kind,reseed,uneven", INTERFERENCE_SLICE)
def test_interference_calibration_slice(kind: str, reseed: float, uneven: float):
    """The interference interval covers the simulated truth (600 seeded draws per cell; the full grid
    is in benchmarks/calibration.py), and at a true 0 it rarely reads "less" or "more"."""
    if kind == "null":
        r = simulate.null_update_regime(reseed, uneven)
    else:
        r = next(
            x for x in simulate.UPDATE_REGIMES if (x.reseed, x.uneven) == (reseed, uneven) and kind in x.name
        )
    for n in (3, 5):
        m = simulate.measure_interference(r, n, n_reps=600, seed=42)
        assert m["coverage"] >= 0.92, (r.name, n, m)
        if kind == "null":
            assert abs(m["truth"]) < 0.01 and m["less"] + m["more"] <= 0.08, (r.name, n, m)
