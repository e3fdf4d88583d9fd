"""Does X move LoRA's update more than a reseed does? An interval on that, from the seeds.

A combination's LoRA, trained beside X, is compared with the same LoRA configuration
trained alone on the same seed (cosine ``with_x[s]`` of the two weight updates), and the
scale is set by LoRA alone against itself on another seed (``reseed[s, t]``): how far
a new initialisation and data order move the update. Both are cosines of (flattened)
weight updates, so they are bounded and skewed near 1; they are compared on Fisher's
z scale (``atanh``), where their spread is closer to symmetric:

    diff = mean_s z(with_x[s]) - mean_{s<t} z(reseed[s, t])

``diff > 0``: X moves LoRA less than a reseed does (LoRA's solution stays in place);
``diff < 0``: more (interference beyond seed noise). The pairs share seeds, so they are
not independent: the interval is a delete-one-seed jackknife with ``S - 1`` degrees of
freedom. Measured against a known truth by ``ablate.stats.simulate.measure_interference``
(``benchmarks/calibration.py``, 1,000 draws per cell): this interval covered 92.6-97.9% over
108 designs (3, 5 and 10 seeds; LoRA that a reseed barely moves to one it moves far; X a
mild or strong push per run, or a pull towards one direction; per-seed noise even or up to
e-fold uneven), and where X moves LoRA exactly as far as a reseed does, it read "less" or
"more" 2.9-7.1% of the time (the top of that range with strongly uneven seeds). A t interval
on each side alone was tried too and covered as little as 86% in a prototype of this harness
(the with-X side under strongly uneven seeds), so only the difference gets an interval in
the report. Pure numpy/scipy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEEDS = 3  # the jackknife leaves one seed out and still needs a reseed pair
_CLIP = 1 - 1e-6  # cos = 1 exactly (X left LoRA untouched) would be z = inf

LESS = "less than a reseed"
MORE = "more than a reseed"
SAME = "no more or less than a reseed (cannot tell apart)"
FEW = "too few seeds"


@dataclass(frozen=True)
class Interference:
    n_seeds: int
    cos_with_x: float  # typical cosine with X, same seed: tanh(mean z)
    cos_reseed: float  # typical cosine of LoRA alone across seeds: tanh(mean z)
    diff: float  # mean z(with X) - mean z(reseed)
    lo: float
    hi: float
    reading: str  # LESS | MORE | SAME | FEW

    @property
    def decided(self) -> bool:
        return self.reading in (LESS, MORE)


def fisher_z(cos: np.ndarray | float) -> np.ndarray:
    return np.arctanh(np.clip(np.asarray(cos, dtype=float), -_CLIP, _CLIP))


def _pair_mean(z: np.ndarray, keep: np.ndarray) -> float:
    sub = z[np.ix_(keep, keep)]
    return float(sub[np.triu_indices(len(keep), 1)].mean())


def interval_arrays(
    with_x: np.ndarray, reseed: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(diff, lo, hi)`` from per-seed cosines ``with_x`` (S,) and the symmetric reseed matrix
    (S, S) of the same seeds (its diagonal unused). nan bounds below ``MIN_SEEDS`` seeds."""
    zw, zr = fisher_z(with_x), fisher_z(reseed)
    n = len(zw)
    if n < 2:
        return math.nan, math.nan, math.nan
    seeds = np.arange(n)
    diff = float(zw.mean()) - _pair_mean(zr, seeds)
    if n < MIN_SEEDS:
        return diff, math.nan, math.nan
    loo = np.array([zw[np.delete(seeds, i)].mean() - _pair_mean(zr, np.delete(seeds, i)) for i in seeds])
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return diff, diff - half, diff + half


def interference(
    with_x: Mapping[int, float], reseed: Mapping[tuple[int, int], float], confidence: float = 0.95
) -> Interference:
    """The reading from per-seed cosines (``{seed: cos}``) and reseed pairs (``{(s, t): cos}``).
    Only seeds with a with-X cosine and every reseed pair among them enter."""
    wx = {int(s): float(c) for s, c in with_x.items()}
    seeds = sorted(wx)
    pair = {(min(int(a), int(b)), max(int(a), int(b))): float(c) for (a, b), c in reseed.items()}
    while seeds and any((min(s, t), max(s, t)) not in pair for s in seeds for t in seeds if s != t):
        # drop the seed missing most pairs (a reseed run that failed): the rest stay complete
        missing = {s: sum((min(s, t), max(s, t)) not in pair for t in seeds if t != s) for s in seeds}
        seeds.remove(max(missing, key=lambda s: (missing[s], s)))
    n = len(seeds)
    if n < 2:
        return Interference(n, math.nan, math.nan, math.nan, math.nan, math.nan, FEW)
    w = np.array([wx[s] for s in seeds])
    r = np.ones((n, n))
    for i, s in enumerate(seeds):
        for j, t in enumerate(seeds):
            if i != j:
                r[i, j] = pair[(min(s, t), max(s, t))]
    diff, lo, hi = interval_arrays(w, r, confidence)
    cos_w = float(np.tanh(fisher_z(w).mean()))
    cos_r = float(np.tanh(fisher_z(r[np.triu_indices(n, 1)]).mean()))
    reading = FEW if math.isnan(lo) else LESS if lo > 0 else MORE if hi < 0 else SAME
    return Interference(n, cos_w, cos_r, diff, lo, hi, reading)
