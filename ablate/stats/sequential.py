"""Group-sequential replication: as many seeds as a verdict needs, at a stated error rate.

``study.seeds=auto`` replicates every arm at the first look's number of seeds, then looks: each
primary comparison (a LoRA+X arm against the baseline) is tested with the verdict core
(:func:`ablate.stats.verdict.compare`: the crossed seeds x items t), and only the arms whose
comparison is still open get the next look's seeds. The looks are planned before any data
(``study.looks``, capped by ``study.max_seeds``), so every decision is made on test data that
was planned before it was seen.

Error is spent over the looks with a Lan-DeMets spending function of the information fraction
``t_k = n_k / n_K`` (seeds so far over seeds at the cap):

- O'Brien-Fleming shape (default): ``alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))``, almost
  nothing early, nearly the whole ``alpha`` at the cap;
- Pocock shape: ``alpha(t) = alpha log(1 + (e - 1) t)``, evenly over the looks.

The boundaries ``c_k`` (z scale) solve ``P(no crossing before look k, crossing at k) = alpha(t_k)
- alpha(t_{k-1})`` under the canonical joint law of the looks' statistics (Brownian motion:
``corr(Z_j, Z_k) = sqrt(t_j / t_k)``), computed with scipy's multivariate normal. A comparison
is "better" or "worse" at look ``k`` when its two-sided t p-value is below the nominal level
``2 (1 - Phi(c_k))``; it is "equivalent" when both one-sided tests of its TOST reject ``|D| >=
sesoi`` at the one-sided nominal level of the same shape (equivalence error is spent too); it
is "futile" (optional, ``futility > 0``) when, from the second look on, its conditional power to
be decided by the cap under the current trend is below ``futility``: futility stops are
non-binding, so they can only lower the rate of false better/worse verdicts. An arm still open
at the last look is "inconclusive at the cap of N seeds".

The family: each of the ``m`` primary comparisons spends ``alpha / m`` (Bonferroni). Holm's
step-down over group-sequential tests needs the graphical approach of Maurer and Bretz (2013);
Bonferroni is valid without it and, for the one to three comparisons of ablate's studies, loses
little. The t p-values at a few seeds are not the z statistics the boundaries assume, so none
of this is taken on trust: :func:`simulate` runs the design on the calibration harness's regimes
and ``benchmarks/results/sequential.md`` gives the family-wise rate, the power at a true
``sesoi`` and the expected seeds against a fixed design of equal power.

Pure numpy/scipy: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import optimize, stats

from ablate.stats import verdict as V

SPENDING = ("obf", "pocock")
# why a comparison stopped; OPEN: it takes the next look's seeds
OPEN, DECIDED, EQUIVALENT, FUTILE, CAP, NO_VERDICT = (
    "open",
    "decided",
    "equivalent",
    "futile",
    "cap",
    "no verdict",
)
LOOKS = (3, 5, 8, 12, 20)  # study.looks' default: about x1.6 a look, as sequential designs in trials


def spent(t: np.ndarray | float, alpha: float, shape: str) -> np.ndarray:
    """Error spent by information fraction ``t`` (Lan and DeMets 1983; as gsDesign's ``sfLDOF``
    and ``sfLDPocock``): ``alpha`` is the total to spend, one- or two-sided alike."""
    t = np.clip(np.asarray(t, dtype=float), 1e-12, 1.0)
    if shape == "obf":
        return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))
    if shape == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise ValueError(f"spending must be one of {SPENDING}, got {shape!r}")


def boundaries(fractions: tuple[float, ...], alpha: float, shape: str, sides: int = 2) -> tuple[float, ...]:
    """z boundaries ``c_k`` that spend ``alpha`` as ``shape`` says at these information fractions.

    Two-sided: reject at look k when ``|Z_k| >= c_k``; one-sided: when ``Z_k >= c_k``. Each
    ``c_k`` solves the crossing probability at look k (none before) for the increment of the
    spending function, with the earlier boundaries fixed: the recursive numerical integration of
    Armitage, McPherson and Rowe (1969) over the score ``S_k = Z_k sqrt(t_k)``, whose increments
    are independent N(0, t_k - t_{k-1}); the density of not having stopped is carried on a grid of
    ``GRID`` points (trapezoid rule). tests/test_sequential.py checks the result against a
    Monte Carlo of the same Brownian motion. No library fits: scipy has no group-sequential
    boundaries, and its multivariate normal (tried) took 30 s for five looks.
    """
    t = np.asarray(fractions, dtype=float)
    if not (np.all(np.diff(t) > 0) and t[0] > 0 and t[-1] == 1.0):
        raise ValueError(f"information fractions must increase to 1, got {fractions}")
    cum = spent(t, alpha, shape)
    out: list[float] = []
    grid = density = None  # S at the previous look, and the density of not having stopped there
    for k in range(len(t)):
        target = cum[k] - (cum[k - 1] if k else 0.0)
        sd = math.sqrt(t[k] - (t[k - 1] if k else 0.0))
        args = (math.sqrt(t[k]), sd, grid, density, sides, target)
        c = optimize.brentq(_crossing, 0.0, 40.0, args=args, xtol=1e-9) if target > 1e-300 else math.inf
        out.append(float(c))
        hi = c * math.sqrt(t[k])
        lo = -hi if sides == 2 else -12.0 * math.sqrt(t[k])
        new = np.linspace(lo, min(hi, 12.0 * math.sqrt(t[k])), GRID)
        if grid is None:
            density = stats.norm.pdf(new / sd) / sd
        else:
            kernel = stats.norm.pdf((new[:, None] - grid[None, :]) / sd) / sd
            density = np.trapezoid(kernel * density[None, :], grid, axis=1)
        grid = new
    return tuple(out)


def _crossing(
    c: float, root_t: float, sd: float, grid: np.ndarray | None, density: np.ndarray | None,
    sides: int, target: float,
) -> float:  # fmt: skip
    """P(not stopped before, crossing ``c`` now) minus ``target``: the score S now is S before
    (``grid``, with the sub-density ``density``; None at the first look: S before is 0) plus an
    independent N(0, ``sd``^2)."""
    hi = c * root_t
    if grid is None:
        up = stats.norm.sf(hi / sd)
        return sides * up - target
    up = stats.norm.sf((hi - grid) / sd)
    down = stats.norm.cdf((-hi - grid) / sd) if sides == 2 else 0.0
    return float(np.trapezoid(density * (up + down), grid)) - target


GRID = 2001  # points of the recursion's grid: boundaries to about 1e-4 on the z scale


@dataclass(frozen=True)
class Design:
    """A group-sequential design over a primary family of ``m`` comparisons."""

    looks: tuple[int, ...]  # seeds at each look, increasing; the last is the cap
    alpha: float = 0.05  # family-wise, two-sided
    m: int = 1  # comparisons in the primary family: each spends alpha / m
    sesoi: float = 0.02
    spending: str = "obf"
    futility: float = 0.0  # stop when the conditional power under the trend is below this
    equivalence: bool = True  # stop a comparison shown equivalent (TOST at the look's level)

    def __post_init__(self) -> None:
        if not self.looks or list(self.looks) != sorted(set(self.looks)) or self.looks[0] < V.MIN_SEEDS:
            raise ValueError(f"looks must increase from at least {V.MIN_SEEDS} seeds, got {self.looks}")
        if self.spending not in SPENDING:
            raise ValueError(f"spending must be one of {SPENDING}, got {self.spending!r}")

    @property
    def cap(self) -> int:
        return self.looks[-1]

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.cap for n in self.looks)

    @cached_property
    def efficacy(self) -> tuple[float, ...]:
        """Two-sided z boundaries for better/worse, at ``alpha / m`` each."""
        return boundaries(self.fractions, self.alpha / self.m, self.spending, sides=2)

    @cached_property
    def equivalence_bounds(self) -> tuple[float, ...]:
        """One-sided z boundaries for each side of the TOST, spending ``alpha`` (not adjusted:
        an equivalence claim is an intersection-union test, as in the fixed design)."""
        return boundaries(self.fractions, self.alpha, self.spending, sides=1)

    @property
    def nominal(self) -> tuple[float, ...]:
        """The two-sided p a comparison must beat at each look to be called better/worse."""
        return tuple(float(2 * stats.norm.sf(c)) for c in self.efficacy)

    @property
    def nominal_equivalence(self) -> tuple[float, ...]:
        return tuple(float(stats.norm.sf(c)) for c in self.equivalence_bounds)

    def spent_at(self, k: int) -> float:
        """Family-wise error spent up to and including look ``k`` (0-based)."""
        return float(spent(self.fractions[k], self.alpha, self.spending))

    def conditional_power(self, k: int, z: float) -> float:
        """P(|Z| at the cap crosses its boundary | Z_k = z), under the drift the data show
        (z / sqrt(t_k) per unit information): the later looks' boundaries are ignored, so this
        slightly understates the chance of a decision."""
        t = self.fractions[k]
        if t >= 1:
            return 0.0
        b = z * math.sqrt(t)
        drift = b / t
        mean, sd, c = b + drift * (1 - t), math.sqrt(1 - t), self.efficacy[-1]
        return float(stats.norm.sf((c - mean) / sd) + stats.norm.cdf((-c - mean) / sd))

    def step(self, k: int, c: V.Comparison) -> Step:
        """What look ``k`` (0-based) does with comparison ``c`` (computed at ``looks[k]`` seeds)."""
        last = k == len(self.looks) - 1
        if c.status not in V.DECIDABLE:  # floor, ceiling, identical arms: more seeds cannot help
            return Step(
                k, c.n_seeds, NO_VERDICT if c.status != V.TOO_FEW_SEEDS or last else OPEN, V.INCONCLUSIVE
            )
        improved = c.diff > 0 if c.higher_is_better else c.diff < 0
        equivalent = self.equivalence and c.tost_p < self.nominal_equivalence[k]
        if c.p < self.nominal[k] and c.diff != 0:
            word = (
                (V.BETTER_SMALL if equivalent else V.BETTER)
                if improved
                else (V.WORSE_SMALL if equivalent else V.WORSE)
            )
            return Step(k, c.n_seeds, DECIDED, word)
        if equivalent:
            return Step(k, c.n_seeds, EQUIVALENT, V.EQUIVALENT)
        if last:
            return Step(k, c.n_seeds, CAP, V.INCONCLUSIVE)
        z = c.diff / c.se if c.se > 0 else 0.0
        if self.futility > 0 and k > 0 and self.conditional_power(k, z) < self.futility:
            return Step(k, c.n_seeds, FUTILE, V.INCONCLUSIVE)
        return Step(k, c.n_seeds, OPEN, V.INCONCLUSIVE)

    def describe(self) -> dict[str, Any]:
        """The design as recorded and reported: looks, boundaries, nominal levels, alpha spent."""
        return {
            "looks": list(self.looks),
            "alpha": self.alpha,
            "m": self.m,
            "sesoi": self.sesoi,
            "spending": self.spending,
            "futility": self.futility,
            "equivalence": self.equivalence,
            "z": [round(c, 4) for c in self.efficacy],
            "nominal_p": [float(f"{p:.4g}") for p in self.nominal],
            "nominal_equivalence_p": [float(f"{p:.4g}") for p in self.nominal_equivalence],
            "alpha_spent": [float(f"{self.spent_at(k):.4g}") for k in range(len(self.looks))],
        }


@dataclass(frozen=True)
class Step:
    """One look's outcome for one comparison."""

    look: int
    n_seeds: int
    reason: str  # OPEN, DECIDED, EQUIVALENT, FUTILE, CAP, NO_VERDICT
    verdict: str = V.INCONCLUSIVE

    @property
    def stopped(self) -> bool:
        return self.reason != OPEN


def make_design(looks: list[int] | tuple[int, ...], max_seeds: int, **kw: Any) -> Design:
    """The looks at or below ``max_seeds``, ending at it: ``(3, 5, 8, 12, 20)`` capped at 10 is
    ``(3, 5, 8, 10)``."""
    kept = [n for n in sorted(set(looks)) if n < max_seeds]
    return Design(looks=(*kept, max_seeds), **kw)


# --------------------------------------------------------------------------- the harness


@dataclass
class Run:
    """Simulated studies under one design: where each comparison stopped, and with what."""

    design: Design
    reasons: np.ndarray  # (R, m) stop reasons
    better: np.ndarray  # (R, m) called better (any "better" word)
    worse: np.ndarray  # (R, m)
    equivalent: np.ndarray  # (R, m) stopped as equivalent
    seeds: np.ndarray  # (R, m) seeds of the arm at its stop

    @property
    def seeds_spent(self) -> np.ndarray:
        """(R,) seeds of the m arms plus the baseline, which runs until the last one stops."""
        return self.seeds.sum(axis=1) + self.seeds.max(axis=1)


def _stats(d: np.ndarray, sesoi: float) -> tuple[np.ndarray, ...]:
    """The verdict core's numbers on a batch ``(R, S, I)`` of differences: mean, se, df, the
    two-sided p, the TOST p, and whether it is decidable (the rules of ``anova_calls``)."""
    from ablate.stats.anova import mean_squares, satterthwaite

    n_seeds, n_items = d.shape[-2:]
    mean, ms_s, ms_i, ms_r = mean_squares(d)
    var, df = satterthwaite(ms_s, ms_i, ms_r, n_seeds, n_items)
    se = np.sqrt(var)
    safe = np.where(se > 0, se, 1.0)
    p = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / safe, df), (mean == 0).astype(float))
    tost = np.where(
        se > 0,
        np.maximum(stats.t.sf((mean + sesoi) / safe, df), stats.t.cdf((mean - sesoi) / safe, df)),
        (np.abs(mean) >= sesoi).astype(float),
    )
    decidable = (np.ptp(d.reshape(len(d), -1), axis=1) > 0) & (n_seeds >= V.MIN_SEEDS)
    return mean, se, df, p, tost, decidable


def run_batch(design: Design, d: np.ndarray) -> Run:
    """``design`` on a batch of simulated studies: ``d`` is ``(R, m, cap, I)``, each arm minus the
    baseline on the same seeds and items (EM, higher is better). Vectorised; the same rules as
    :meth:`Design.step` (the test suite checks them against it draw by draw)."""
    n_reps, m = d.shape[:2]
    reasons = np.full((n_reps, m), OPEN, dtype=object)
    better = np.zeros((n_reps, m), bool)
    worse = np.zeros((n_reps, m), bool)
    equivalent = np.zeros((n_reps, m), bool)
    seeds = np.zeros((n_reps, m), int)
    last = len(design.looks) - 1
    for k, n in enumerate(design.looks):
        for j in range(m):
            live = reasons[:, j] == OPEN
            if not live.any():
                continue
            mean, se, df, p, tost, ok = _stats(d[live, j, :n], design.sesoi)
            eq = ok & design.equivalence & (tost < design.nominal_equivalence[k])
            sig = ok & (p < design.nominal[k]) & (mean != 0)
            reason = np.where(sig, DECIDED, np.where(eq, EQUIVALENT, np.where(~ok, NO_VERDICT, OPEN)))
            if k == last:
                reason = np.where(reason == OPEN, CAP, reason)
            elif design.futility > 0 and k > 0:
                t = design.fractions[k]
                b = np.where(se > 0, mean / np.where(se > 0, se, 1.0), 0.0) * math.sqrt(t)
                mu, sd, c = b / t, math.sqrt(1 - t), design.efficacy[-1]
                cp = stats.norm.sf((c - mu) / sd) + stats.norm.cdf((-c - mu) / sd)
                reason = np.where((reason == OPEN) & (cp < design.futility), FUTILE, reason)
            idx = np.flatnonzero(live)
            reasons[idx, j] = reason
            better[idx, j], worse[idx, j] = sig & (mean > 0), sig & (mean < 0)
            equivalent[idx, j] = (reason == EQUIVALENT) | (sig & eq)
            seeds[idx, j] = n
    return Run(design, reasons, better, worse, equivalent, seeds)


def fixed_calls(d: np.ndarray, sesoi: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """What a fixed design decides on ``d`` ``(R, m, N, I)``: (better, worse), each ``(R, m)``,
    Holm-adjusted over the m comparisons as the report adjusts its primary family."""
    n_reps, m = d.shape[:2]
    p = np.ones((n_reps, m))
    mean = np.zeros((n_reps, m))
    for j in range(m):
        mj, _, _, pj, _, ok = _stats(d[:, j], sesoi)
        p[:, j], mean[:, j] = np.where(ok, pj, 1.0), mj
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1) * (m - np.arange(m))[None, :]
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.minimum(np.maximum.accumulate(ranked, axis=1), 1.0), axis=1)
    sig = (adjusted < alpha) & (mean != 0)
    return sig & (mean > 0), sig & (mean < 0)


def measure(
    regime: Any, design: Design, effect: float, n_items: int, *, n_reps: int = 1000, seed: int = 0,
    fixed_max: int = 40,
) -> dict[str, float]:  # fmt: skip
    """The design on ``n_reps`` simulated studies of ``design.m`` arms, each with a true ``effect``
    over the baseline (EM), against the fixed design: family-wise rate of false better/worse
    (at a true 0, any call; else a "worse"), the power to call "better", "equivalent", the
    expected seeds, and the smallest fixed number of seeds whose power reaches the design's
    (``fixed_max + 1``: none up to ``fixed_max``), with its seeds in all."""
    from ablate.stats import simulate as S

    rng = np.random.default_rng([seed, design.m, n_items, design.cap, int(round(effect * 1e6)) % 2**31, 23])
    deltas = np.array([0.0] + [S.delta_for(regime, effect)] * design.m)
    horizon = max(design.cap, fixed_max)
    runs, fixed_better = [], []
    for size in S._chunks(n_reps, (design.m + 1) * horizon * n_items):
        items = S.draw_items(regime, size, design.m + 1, n_items, rng)
        y = S.draw_seeds(regime, items, deltas, horizon, rng)  # (R, arms, S, I)
        d = y[:, 1:] - y[:, :1]
        runs.append(run_batch(design, d[:, :, : design.cap]))
        fixed_better.append(
            np.stack([fixed_calls(d[:, :, :n], design.sesoi, design.alpha)[0].mean(axis=1) for n in range(V.MIN_SEEDS, fixed_max + 1)], axis=1)
        )  # fmt: skip
    better = np.concatenate([r.better for r in runs])
    worse = np.concatenate([r.worse for r in runs])
    false = (better | worse) if effect == 0 else worse
    power = float(better.mean()) if effect != 0 else math.nan
    fixed_power = np.concatenate(fixed_better).mean(axis=0)  # by N = MIN_SEEDS..fixed_max
    reach = np.flatnonzero(fixed_power >= power) if effect != 0 else np.array([])
    n_fixed = int(V.MIN_SEEDS + reach[0]) if len(reach) else fixed_max + 1
    spent_ = np.concatenate([r.seeds_spent for r in runs])
    reasons = np.concatenate([r.reasons for r in runs])
    return {
        "false": float(false.any(axis=1).mean()),
        "power": power,
        "equivalent": float(np.concatenate([r.equivalent for r in runs]).mean()),
        "seeds_per_arm": float(np.concatenate([r.seeds for r in runs]).mean()),
        "seeds_spent": float(spent_.mean()),
        "at_cap": float((reasons == CAP).mean()),
        "fixed_n": n_fixed,
        "fixed_spent": n_fixed * (design.m + 1),
        "n": n_reps,
    }
