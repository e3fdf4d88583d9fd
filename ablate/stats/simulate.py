"""Calibration harness: how often the verdict is wrong, measured against a known truth.

A generative model of (arms x seeds x items) outcomes with every source of variation a
study has, for binary exact-match scores and for continuous per-item losses:

    logit p[k, s, i] = base + theta_i + delta_k + u[k, i] + v[k, s] + w[k, s, i]   (binary: y ~ Bernoulli(p))
          y[k, s, i] = base + theta_i + delta_k + u[k, i] + v[k, s] + w[k, s, i]   (continuous)

``theta``: item difficulty shared by every arm; ``u``: item x arm; ``v``: a whole training
run better or worse (per seed, correlated between arms through ``seed_corr``: the same seed
gives both arms the same data order); ``w``: seed x item noise (correlated through
``noise_corr``). Arm 0 is the baseline (``delta = 0``); the true effect is the difference of
the population means, computed exactly (Gauss-Hermite on the logistic-normal integral, so
the effect is on the scale the report prints, not on the logit scale).

:func:`measure` runs the verdict core over many draws of one design and counts coverage,
false verdicts, "equivalent" and power; :func:`measure_family` the family-wise rate under
Holm; :func:`measure_plan` whether topping up to the promised number of seeds delivers the
promised decision rate. ``benchmarks/calibration.py`` runs the grid; the test suite runs a
seeded slice. Pure numpy/scipy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from ablate.stats import verdict as V
from ablate.stats.anova import DF_GUARD, mean_squares, satterthwaite
from ablate.stats.bootstrap import two_way_bootstrap

SESOI = 0.02  # the default study's sesoi: 2 EM points


@dataclass(frozen=True)
class Regime:
    """Where the noise is. Standard deviations on the logit scale (binary) or the outcome's own."""

    name: str
    binary: bool
    base: float  # mean logit (binary) or mean outcome of the baseline
    item_sd: float  # item difficulty, shared by every arm
    item_arm_sd: float  # item x arm
    seed_sd: float  # a whole run better or worse
    seed_corr: float  # correlation of the arms' seed shifts at one seed
    noise_sd: float  # seed x item
    noise_corr: float  # correlation of the arms' seed x item noise at one seed and item

    @property
    def total_sd(self) -> float:
        return math.sqrt(self.item_sd**2 + self.item_arm_sd**2 + self.seed_sd**2 + self.noise_sd**2)


# Binary: baseline accuracy about 36% (the default study's LoRA). The seed-dominated regime gives a
# per-seed accuracy SD of about 5.6 points on 400 items (what SmolLM2 runs of 30 steps show);
# :func:`per_seed_sd` measures it. Continuous: per-item response losses (nats), sesoi 0.02.
REGIMES = {
    r.name: r
    for r in (
        Regime("item-dominated", True, -0.7, 2.0, 1.0, 0.0, 0.5, 0.3, 0.5),
        Regime("moderate", True, -0.7, 2.0, 0.5, 0.15, 0.5, 0.8, 0.5),
        Regime("seed-dominated", True, -0.7, 1.5, 0.25, 0.35, 0.3, 0.5, 0.5),
        Regime("loss, moderate", False, 1.5, 1.0, 0.15, 0.02, 0.5, 0.3, 0.5),
        Regime("loss, seed-dominated", False, 1.5, 1.0, 0.05, 0.06, 0.3, 0.1, 0.5),
    )
}

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)  # E[f(Z)], Z ~ N(0, 1)


def population_mean(regime: Regime, delta: float) -> float:
    """The population mean outcome of an arm with logit (or outcome) shift ``delta``."""
    if not regime.binary:
        return regime.base + delta
    z = regime.base + delta + regime.total_sd * _GH_X
    return float(np.sum(_GH_W * special.expit(z)) / np.sum(_GH_W))


def delta_for(regime: Regime, effect: float) -> float:
    """The shift ``delta`` that makes the true difference of population means equal ``effect``."""
    if not regime.binary or effect == 0:
        return effect
    base = population_mean(regime, 0.0)
    return float(optimize.brentq(lambda d: population_mean(regime, d) - base - effect, -5, 5, xtol=1e-12))


@dataclass
class Items:
    """One draw of the test items (shared by every seed) for a batch of simulated studies."""

    theta: np.ndarray  # (R, I)
    u: np.ndarray  # (R, K, I)


def draw_items(regime: Regime, n_reps: int, n_arms: int, n_items: int, rng: np.random.Generator) -> Items:
    theta = regime.item_sd * rng.standard_normal((n_reps, n_items))
    u = regime.item_arm_sd * rng.standard_normal((n_reps, n_arms, n_items))
    return Items(theta, u)


def _correlated(rng: np.random.Generator, shape: tuple[int, ...], corr: float) -> np.ndarray:
    """Standard normals over axis 1 (the arms) with pairwise correlation ``corr``."""
    shared = rng.standard_normal((shape[0], 1, *shape[2:]))
    own = rng.standard_normal(shape)
    return math.sqrt(corr) * shared + math.sqrt(1 - corr) * own


def draw_seeds(
    regime: Regime, items: Items, deltas: np.ndarray, n_seeds: int, rng: np.random.Generator
) -> np.ndarray:
    """Outcomes ``(R, K, S, I)`` of ``n_seeds`` new seeds on ``items`` (arm ``k`` shifted by ``deltas[k]``)."""
    n_reps, n_arms, n_items = items.u.shape
    v = regime.seed_sd * _correlated(rng, (n_reps, n_arms, n_seeds), regime.seed_corr)
    w = regime.noise_sd * _correlated(rng, (n_reps, n_arms, n_seeds, n_items), regime.noise_corr)
    eta = (
        regime.base
        + items.theta[:, None, None, :]
        + np.asarray(deltas, dtype=float)[None, :, None, None]
        + items.u[:, :, None, :]
        + v[..., None]
        + w
    )
    if not regime.binary:
        return eta
    return (rng.random(eta.shape) < special.expit(eta)).astype(np.float64)


def per_seed_sd(regime: Regime, n_items: int = 400, n_seeds: int = 200, seed: int = 0) -> float:
    """SD over seeds of one arm's mean score on one fixed set of ``n_items`` items."""
    rng = np.random.default_rng(seed)
    items = draw_items(regime, 1, 1, n_items, rng)
    y = draw_seeds(regime, items, np.zeros(1), n_seeds, rng)[0, 0]
    return float(y.mean(axis=1).std(ddof=1))


# --------------------------------------------------------------------------- methods on batches


@dataclass
class Calls:
    """A batch of verdicts: interval, and what was called (booleans over the batch)."""

    lo: np.ndarray
    hi: np.ndarray
    better: np.ndarray  # significant and positive (any "better" word)
    worse: np.ndarray
    equivalent: np.ndarray  # equivalence shown (alone or beside a significant difference)


def anova_calls(d: np.ndarray, sesoi: float, alpha: float, *, guard: float | None = DF_GUARD) -> Calls:
    """The verdict core (``ablate.stats.verdict``) on a batch ``(R, S, I)``, vectorised.

    The same rules as :func:`ablate.stats.verdict.compare` (the test suite checks that they
    agree draw by draw): t on the crossed variance with Satterthwaite df, no decisive call
    below ``MIN_SEEDS`` seeds, no call when ``d`` does not vary.
    """
    n_seeds, n_items = d.shape[-2:]
    mean, ms_s, ms_i, ms_r = mean_squares(d)
    var, df = satterthwaite(ms_s, ms_i, ms_r, n_seeds, n_items, guard=guard)
    se = np.sqrt(var)
    varies = np.ptp(d.reshape(len(d), -1), axis=1) > 0
    safe = np.where(se > 0, se, 1.0)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    p = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / safe, df), (mean == 0).astype(float))
    p_low = stats.t.sf((mean + sesoi) / safe, df)
    p_high = stats.t.cdf((mean - sesoi) / safe, df)
    tost = np.where(se > 0, np.maximum(p_low, p_high), (np.abs(mean) >= sesoi).astype(float))
    decidable = varies & (n_seeds >= V.MIN_SEEDS)
    sig = decidable & (p < alpha) & (mean != 0)
    return Calls(mean - half, mean + half, sig & (mean > 0), sig & (mean < 0), decidable & (tost < alpha))


def bootstrap_calls(d: np.ndarray, sesoi: float, alpha: float, *, n_resamples: int = 1000) -> Calls:
    """The old verdict: two-way percentile bootstrap, decisive at any number of seeds."""
    out = [
        two_way_bootstrap(x, n_resamples=n_resamples, confidence=1 - alpha, seed=i) for i, x in enumerate(d)
    ]
    lo, hi = np.array([b.lo for b in out]), np.array([b.hi for b in out])
    p = np.array([b.p for b in out])
    mean = np.array([b.mean for b in out])
    tost = np.array([b.tost_p(sesoi) for b in out])
    sig = (p < alpha) & (mean != 0)
    return Calls(lo, hi, sig & (mean > 0), sig & (mean < 0), tost < alpha)


METHODS: dict[str, Callable[..., Calls]] = {
    "anova-t": anova_calls,
    "anova-t, plain Satterthwaite": lambda d, sesoi, alpha: anova_calls(d, sesoi, alpha, guard=None),
    "bootstrap (old)": bootstrap_calls,
}


# --------------------------------------------------------------------------- measurements


def _chunks(n_reps: int, per_rep: int, budget: int = 3_000_000) -> list[int]:
    size = max(1, budget // max(per_rep, 1))
    return [min(size, n_reps - i) for i in range(0, n_reps, size)]


def measure(
    regime: Regime,
    effect: float,
    n_seeds: int,
    n_items: int,
    *,
    n_reps: int = 1000,
    sesoi: float = SESOI,
    alpha: float = 0.05,
    method: str = "anova-t",
    seed: int = 0,
) -> dict[str, float]:
    """Rates over ``n_reps`` simulated comparisons (arm - baseline) with a true ``effect``."""
    rng = np.random.default_rng([seed, n_seeds, n_items, int(round(effect * 1e6)) % 2**31])
    deltas = np.array([0.0, delta_for(regime, effect)])
    calls = []
    for size in _chunks(n_reps, 2 * n_seeds * n_items):
        items = draw_items(regime, size, 2, n_items, rng)
        y = draw_seeds(regime, items, deltas, n_seeds, rng)
        calls.append(METHODS[method](y[:, 1] - y[:, 0], sesoi, alpha))
    lo, hi = np.concatenate([c.lo for c in calls]), np.concatenate([c.hi for c in calls])
    better = np.concatenate([c.better for c in calls])
    worse = np.concatenate([c.worse for c in calls])
    equiv = np.concatenate([c.equivalent for c in calls])
    return {
        "coverage": float(np.mean((lo <= effect) & (effect <= hi))),
        "better": float(better.mean()),
        "worse": float(worse.mean()),
        "equivalent": float(equiv.mean()),
        "width": float(np.mean(hi - lo)),
        "n": n_reps,
    }


def measure_family(
    regime: Regime, n_arms: int, n_seeds: int, n_items: int, *, n_reps: int = 1000, seed: int = 0,
    sesoi: float = SESOI, alpha: float = 0.05,
) -> float:  # fmt: skip
    """Family-wise rate of any false better/worse among ``n_arms`` identical arms vs one
    baseline (all effects 0), Holm-adjusted as the report adjusts its primary family."""
    rng = np.random.default_rng([seed, n_arms, n_seeds, n_items, 7])
    false = 0
    for _ in range(n_reps):
        items = draw_items(regime, 1, n_arms + 1, n_items, rng)
        y = draw_seeds(regime, items, np.zeros(n_arms + 1), n_seeds, rng)[0]
        comps = {
            f"arm{k}": V.compare(y[k], y[0], metric="em", sesoi=sesoi, alpha=alpha)
            for k in range(1, n_arms + 1)
        }
        fam = V.holm_family(comps, list(comps))
        false += any(c.verdict in (V.BETTER, V.WORSE, V.BETTER_SMALL, V.WORSE_SMALL) for c in fam.values())
    return false / n_reps


def measure_plan(
    regime: Regime, effect: float, n_items: int, *, first: int = V.MIN_SEEDS, n_reps: int = 300,
    sesoi: float = SESOI, alpha: float = 0.05, seed: int = 0, cap: int = V.MAX_SEEDS,
) -> dict[str, float]:  # fmt: skip
    """Does "would need about N seeds" keep its promise? Among first rounds of ``first`` seeds
    that came out inconclusive with a plan of N <= ``cap`` seeds, top up to N seeds on the same
    items and count the rounds that then reach the right decision: "better" at a true
    ``+sesoi`` (promised ``POWER``), "equivalent" at a true 0 (promised ``POWER``)."""
    rng = np.random.default_rng([seed, n_items, int(round(effect * 1e6)) % 2**31, 11])
    deltas = np.array([0.0, delta_for(regime, effect)])
    planned = reached = no_plan = over_cap = decided_first = 0
    seeds_used = []
    for _ in range(n_reps):
        items = draw_items(regime, 1, 2, n_items, rng)
        y = draw_seeds(regime, items, deltas, first, rng)[0]
        c = V.compare(y[1], y[0], metric="em", sesoi=sesoi, alpha=alpha)
        if c.decided:
            decided_first += 1
            continue
        if c.seeds_needed is None:
            no_plan += 1
            continue
        if c.seeds_needed > cap:
            over_cap += 1
            continue
        more = draw_seeds(regime, items, deltas, c.seeds_needed - first, rng)[0]
        y = np.concatenate([y, more], axis=1)
        c2 = V.compare(y[1], y[0], metric="em", sesoi=sesoi, alpha=alpha)
        planned += 1
        seeds_used.append(c.seeds_needed)
        want = (V.EQUIVALENT, V.BETTER_SMALL, V.WORSE_SMALL) if effect == 0 else (V.BETTER, V.BETTER_SMALL)
        reached += c2.verdict in want
    return {
        "promised": V.POWER,
        "reached": reached / planned if planned else math.nan,
        "planned": planned,
        "decided_first": decided_first,
        "no_plan": no_plan,
        "over_cap": over_cap,
        "median_seeds": float(np.median(seeds_used)) if seeds_used else math.nan,
        "n": n_reps,
    }


# --------------------------------------------------------------------------- search repeats

#: how far the configuration one search picks moves an arm (logit scale), in the regimes of
#: ``search_grid``: 0.15 is about 2-3 EM points between two searches' picks at a 36% baseline
CONFIG_SDS = (0.0, 0.15, 0.3)


def measure_search(
    regime: Regime, config_sd: float, n_searches: int, n_seeds: int, n_items: int, effect: float, *,
    n_reps: int = 1000, sesoi: float = SESOI, alpha: float = 0.05, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """``study.search_repeats``: each of ``n_searches`` independent searches per arm picks a
    configuration whose quality is one draw ``c ~ N(0, config_sd)`` (per arm and search, on the
    logit scale), then its best is replicated on ``n_seeds`` seeds of its own. The true effect is
    the difference of the arms' population means *over the choice of configuration*: what another
    lab running the same search would find.

    Three intervals on the same draws: ``repeats`` (the report's: each search's seeds averaged
    into one row, the crossed seeds x items core on searches x items), ``pooled seeds`` (every
    seed of every search as its own row, as if the searches were one: ignores that seeds of one
    search share its configuration), and ``one search`` (only the first search's seeds: today's
    study, with as many seeds as all the searches together: its interval covers seeds and items
    given the configuration that one search happened to pick)."""
    rng = np.random.default_rng([seed, n_searches, n_seeds, n_items, int(round(config_sd * 1e3)), 13])
    # the configuration draw is one more Gaussian term per arm: the population mean integrates it
    wide = Regime(
        regime.name, regime.binary, regime.base, regime.item_sd,
        math.sqrt(regime.item_arm_sd**2 + config_sd**2), regime.seed_sd, regime.seed_corr,
        regime.noise_sd, regime.noise_corr,
    )  # fmt: skip
    deltas = np.array([0.0, delta_for(wide, effect)])
    hits = {"repeats": [], "pooled seeds": [], "one search": []}
    false = {k: [] for k in hits}
    for size in _chunks(n_reps, 2 * n_searches * n_seeds * n_items):
        items = draw_items(regime, size, 2, n_items, rng)
        runs = []
        for _ in range(n_searches):
            c = config_sd * rng.standard_normal((size, 2, 1))
            runs.append(draw_seeds(regime, Items(items.theta, items.u + c), deltas, n_seeds, rng))
        y = np.concatenate(runs, axis=2)  # (R, 2, searches * seeds, I), search by search
        d = y[:, 1] - y[:, 0]
        c = config_sd * rng.standard_normal((size, 2, 1))
        one = draw_seeds(regime, Items(items.theta, items.u + c), deltas, n_searches * n_seeds, rng)
        shaped = {
            "repeats": d.reshape(size, n_searches, n_seeds, n_items).mean(axis=2),
            "pooled seeds": d,
            "one search": one[:, 1] - one[:, 0],
        }
        for k, x in shaped.items():
            calls = anova_calls(x, sesoi, alpha)
            hits[k].append((calls.lo <= effect) & (effect <= calls.hi))
            false[k].append(calls.better | calls.worse)
    out: dict[str, float] = {"n": n_reps}
    for k in hits:
        out[f"coverage/{k}"] = float(np.mean(np.concatenate(hits[k])))
        if effect == 0:
            out[f"false/{k}"] = float(np.mean(np.concatenate(false[k])))
    return out


# --------------------------------------------------------------------------- tasks (pooled)


def _delta_map(regime: Regime, span: float = 0.3, n: int = 601) -> Callable[[np.ndarray], np.ndarray]:
    """``effect -> delta`` on a grid (``delta_for`` by interpolation: exact to ~1e-6 on EM)."""
    effects = np.linspace(-span, span, n)
    deltas = np.array([delta_for(regime, float(e)) if e else 0.0 for e in effects])
    return lambda e: np.interp(e, effects, deltas)


def measure_meta(
    regime: Regime, mu: float, tau: float, n_tasks: int, n_seeds: int, n_items: int, *,
    n_reps: int = 1000, sesoi: float = SESOI, alpha: float = 0.05, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """``study.tasks``: ``n_tasks`` tasks whose true effects (EM, arm - baseline) are drawn
    ``N(mu, tau^2)``, each compared on its own seeds x items (the crossed core's mean and se);
    the pooled interval (``ablate.stats.meta``, each method) should cover ``mu`` and the prediction
    interval a new task's effect. Also the rate of a false pooled better/worse where ``mu = 0``."""
    from ablate.stats import meta

    rng = np.random.default_rng(
        [seed, n_tasks, n_seeds, n_items, int(round(1e4 * tau)), int(round(1e4 * mu)) % 2**31, 17]
    )
    to_delta = _delta_map(regime)
    effects = mu + tau * rng.standard_normal((n_reps, n_tasks))
    new_task = mu + tau * rng.standard_normal(n_reps)
    y = np.empty((n_reps, n_tasks))
    se = np.empty((n_reps, n_tasks))
    for t in range(n_tasks):
        items = draw_items(regime, n_reps, 2, n_items, rng)
        shift = np.stack([np.zeros(n_reps), to_delta(effects[:, t])], axis=1)[:, :, None]
        out = draw_seeds(regime, Items(items.theta, items.u + shift), np.zeros(2), n_seeds, rng)
        d = out[:, 1] - out[:, 0]
        mean, ms_s, ms_i, ms_r = mean_squares(d)
        var, _ = satterthwaite(ms_s, ms_i, ms_r, n_seeds, n_items)
        y[:, t], se[:, t] = mean, np.sqrt(var)
    res: dict[str, float] = {"n": n_reps}
    for method in (meta.HKSJ_FLOOR, meta.HKSJ, meta.NORMAL):
        pooled = [meta.pool(y[r], se[r], sesoi=sesoi, alpha=alpha, method=method) for r in range(n_reps)]
        res[f"coverage/{method}"] = float(np.mean([p.lo <= mu <= p.hi for p in pooled]))
        if mu == 0:
            res[f"false/{method}"] = float(np.mean([p.verdict in FALSE_WORDS for p in pooled]))
        if method == meta.HKSJ_FLOOR:
            res["prediction"] = float(
                np.mean([p.pred_lo <= x <= p.pred_hi for p, x in zip(pooled, new_task, strict=True)])
            )
            res["width"] = float(np.mean([p.hi - p.lo for p in pooled]))
            res["tau2"] = float(np.mean([p.tau2 for p in pooled]))
    return res


FALSE_WORDS = (V.BETTER, V.BETTER_SMALL, V.WORSE, V.WORSE_SMALL)


# --------------------------------------------------------------------------- interference


@dataclass(frozen=True)
class UpdateRegime:
    """LoRA's weight update as a vector: alone at seed s, ``L_s = mu + sigma_s e_s`` (``|mu| = 1``,
    ``e_s`` of unit expected norm, ``sigma_s = reseed * exp(uneven * N(0, 1))``: some runs wander
    further); beside X at the same seed, ``C_s = L_s + path * f_s + shift * nu`` (``f_s`` a
    seed-specific push, ``nu`` one direction X pulls every run towards)."""

    name: str
    reseed: float
    path: float
    shift: float
    uneven: float
    dim: int = 64


def _updates(r: UpdateRegime, n_seeds: int, n_reps: int, rng: np.random.Generator):
    mu, nu = np.zeros(r.dim), np.zeros(r.dim)
    mu[0], nu[1] = 1.0, 1.0
    sigma = r.reseed * np.exp(r.uneven * rng.standard_normal((n_reps, n_seeds, 1)))
    alone = mu + sigma * rng.standard_normal((n_reps, n_seeds, r.dim)) / math.sqrt(r.dim)
    combo = alone + r.path * rng.standard_normal((n_reps, n_seeds, r.dim)) / math.sqrt(r.dim) + r.shift * nu
    return alone, combo


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def interference_truth(r: UpdateRegime, n_draws: int = 200_000, seed: int = 0) -> float:
    """The true difference E z(cos with X) - E z(cos across reseeds), by Monte Carlo."""
    from ablate.stats.similarity import fisher_z

    alone, combo = _updates(r, 2, n_draws, np.random.default_rng([seed, 13]))
    return float(
        fisher_z(_cos(alone[:, 0], combo[:, 0])).mean() - fisher_z(_cos(alone[:, 0], alone[:, 1])).mean()
    )


def measure_interference(
    r: UpdateRegime, n_seeds: int, *, n_reps: int = 1000, seed: int = 0, truth: float | None = None
) -> dict[str, float]:
    """Coverage of ``ablate.stats.similarity``'s 95% interval, and how often it reads "less" or
    "more than a reseed", over ``n_reps`` simulated studies of ``n_seeds`` seeds."""
    from ablate.stats.similarity import interval_arrays

    truth = interference_truth(r, seed=seed) if truth is None else truth
    alone, combo = _updates(r, n_seeds, n_reps, np.random.default_rng([seed, n_seeds, 17]))
    with_x = _cos(alone, combo)
    norms = np.linalg.norm(alone, axis=-1)
    reseed = np.einsum("rsp,rtp->rst", alone, alone) / norms[:, :, None] / norms[:, None, :]
    out = np.array([interval_arrays(with_x[k], reseed[k]) for k in range(n_reps)])
    lo, hi = out[:, 1], out[:, 2]
    return {
        "truth": truth,
        "coverage": float(np.mean((lo <= truth) & (truth <= hi))),
        "less": float(np.mean(lo > 0)),
        "more": float(np.mean(hi < 0)),
        "n": n_reps,
    }


UPDATE_REGIMES = [
    UpdateRegime(f"reseed {reseed:g}, X {label}, uneven {uneven:g}", reseed, path, shift, uneven)
    for reseed in (0.3, 1.0, 2.0)
    for label, path, shift in (("mild", 0.3, 0.0), ("strong", 1.0, 0.0), ("pulls", 0.5, 0.5))
    for uneven in (0.0, 0.5, 1.0)
]


def null_update_regime(reseed: float, uneven: float) -> UpdateRegime:
    """X pushes each run exactly as far as a reseed does (true difference 0): the regime in which
    any "less" or "more than a reseed" reading is false."""
    path = optimize.brentq(
        lambda p: interference_truth(UpdateRegime("", reseed, p, 0.0, uneven), n_draws=50_000),
        1e-3,
        10 * reseed + 5,
        xtol=1e-4,
    )
    return UpdateRegime(
        f"reseed {reseed:g}, X as a reseed, uneven {uneven:g}", reseed, float(path), 0.0, uneven
    )
