"""The two-way (pigeonhole) bootstrap that decided verdicts before ``ablate.stats.anova``.

Kept as the reference the calibration harness measures the current core against
(``benchmarks/calibration.py`` prints both tables side by side): resampling seeds and
items independently counts the seed term ``(S-1)/S`` times and takes percentile limits
from 2-5 resampled seeds, so when whole training runs differ its 95% interval covers far
less than 95%. Nothing in the report uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (seeds, items) matrix, got shape {a.shape}")
    return a


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
