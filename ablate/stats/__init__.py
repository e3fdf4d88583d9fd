"""ablate's verdict on plain arrays: import it without torch and use it on results made anywhere.

    import numpy as np
    from ablate.stats import compare

    arm, base = np.load("arm.npy"), np.load("base.npy")  # (seeds, items) 0/1 exact matches, aligned
    c = compare(arm, base, metric="em", sesoi=0.02)
    print(c.verdict, c.diff, (c.lo, c.hi), c.note or c.plan_note)

``compare`` gives one verdict (better / worse / equivalent / inconclusive, or better / worse
"within sesoi"); ``holm_family`` adjusts a primary family; ``estimate`` and ``variance_parts``
give the crossed seeds x items variance behind them. How often each verdict is wrong is
measured by ``ablate.stats.simulate`` (``benchmarks/calibration.py``).
"""

from __future__ import annotations

from ablate.stats.anova import MeanEstimate, VarianceParts, estimate, variance_parts
from ablate.stats.verdict import (
    BETTER,
    BETTER_SMALL,
    CEILING,
    CONSTANT,
    DECIDABLE,
    EQUIVALENT,
    FLOOR,
    HIGHER_IS_BETTER,
    INCONCLUSIVE,
    MAX_SEEDS,
    MIN_SEEDS,
    NO_DATA,
    NO_ITEMS,
    NO_VARIATION,
    OK,
    POWER,
    TOO_FEW_SEEDS,
    VERDICTS,
    WORSE,
    WORSE_SMALL,
    Comparison,
    compare,
    contrast,
    holm_family,
    interval,
    plan_seeds,
)

__all__ = [
    "BETTER", "BETTER_SMALL", "CEILING", "CONSTANT", "DECIDABLE", "EQUIVALENT", "FLOOR",
    "HIGHER_IS_BETTER", "INCONCLUSIVE", "MAX_SEEDS", "MIN_SEEDS", "NO_DATA", "NO_ITEMS",
    "NO_VARIATION", "OK", "POWER", "TOO_FEW_SEEDS", "VERDICTS", "WORSE", "WORSE_SMALL",
    "Comparison", "MeanEstimate", "VarianceParts", "compare", "contrast", "estimate",
    "holm_family", "interval", "plan_seeds", "variance_parts",
]  # fmt: skip
