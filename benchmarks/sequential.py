"""Does ``study.seeds=auto`` keep its error rate, and what does it save? ``ablate.stats.sequential``
on the calibration harness's regimes.

    python -m benchmarks sequential            # full grid -> benchmarks/results/sequential.{md,json}
    python -m benchmarks sequential --smoke    # a few cells, seconds (the test suite runs this)

For the default design (looks at 3, 5, 8, 12, 20 seeds, O'Brien-Fleming spending, equivalence
stops) and its Pocock variant, over binary EM regimes (item- to seed-dominated), test sets of 200
and 800 items, primary families of 1 and 3 comparisons, and true effects of 0, sesoi and 2 sesoi
(sesoi = 2 points): the family-wise rate of false better/worse verdicts (at 0: any; otherwise a
"worse"), the power to call "better", how often "equivalent" is reached, the seeds spent (the
arms plus the baseline), and the fixed design of equal power: the smallest fixed number of seeds
per arm whose power (Holm over the family, as ablate's fixed design) reaches the sequential
design's, and what it spends.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path

from ablate.stats import sequential as Q
from ablate.stats import simulate as S

RESULTS = Path(__file__).resolve().parent / "results"
REGIMES = ("item-dominated", "moderate", "seed-dominated")
FIXED_MAX = 40  # the fixed design's seeds are searched up to this


def grid(smoke: bool) -> dict:
    regimes = REGIMES if not smoke else ("seed-dominated",)
    items = (200, 800) if not smoke else (64,)
    families = (1, 3) if not smoke else (1,)
    spendings = ("obf", "pocock") if not smoke else ("obf",)
    effects = (0.0, S.SESOI, 2 * S.SESOI)
    reps = 1000 if not smoke else 40
    cells = []
    for spending in spendings:
        for m in families:
            design = Q.Design(looks=Q.LOOKS, m=m, sesoi=S.SESOI, spending=spending)
            for r in regimes:
                for i in items:
                    for e in effects:
                        got = Q.measure(S.REGIMES[r], design, e, i, n_reps=reps, seed=1, fixed_max=FIXED_MAX)
                        cells.append(
                            {"spending": spending, "m": m, "regime": r, "items": i, "effect": e, **got}
                        )
    designs = {
        f"{s}, m={m}": Q.Design(looks=Q.LOOKS, m=m, sesoi=S.SESOI, spending=s).describe()
        for s in spendings
        for m in families
    }
    return {"cells": cells, "designs": designs}


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def render(res: dict, seconds: float) -> str:
    cells = res["cells"]
    null = [c for c in cells if c["effect"] == 0]
    worst = max(c["false"] for c in null)
    reps = cells[0]["n"]
    se = math.sqrt(0.05 * 0.95 / reps)
    lines = [
        "# Sequential seeds: error rate, power and seeds spent",
        "",
        f"`python -m benchmarks sequential` ({date.today()}, {platform.machine()}, {seconds:.0f} s; "
        f"{reps} simulated studies per cell). The design: looks at {', '.join(map(str, Q.LOOKS))} seeds, "
        "each primary comparison at alpha / m (Bonferroni), equivalence stops (TOST at the look's "
        "level), no futility stop; an arm still open at 20 seeds is inconclusive at the cap. "
        "Regimes and the generative model: `ablate/stats/simulate.py`.",
        "",
        f"**False better/worse under identical arms (family-wise), worst cell: {_pct(worst)}** "
        f"(alpha = 5%; one Monte Carlo standard error is {100 * se:.1f} points at this many draws).",
        "",
        "## The boundaries",
        "",
        "| design | looks | z boundary | nominal p (better/worse) | alpha spent |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, d in res["designs"].items():
        lines.append(
            f"| {name} | {', '.join(map(str, d['looks']))} | {', '.join(f'{z:.3f}' for z in d['z'])} | "
            f"{', '.join(f'{p:.2g}' for p in d['nominal_p'])} | {', '.join(f'{a:.2g}' for a in d['alpha_spent'])} |"
        )
    lines += [
        "",
        "## Every cell",
        "",
        "Seeds spent: every arm of the family plus the baseline (X-alone and matched arms take the "
        "first look's seeds in both designs and are not counted). Fixed N: the smallest fixed "
        f"number of seeds per arm whose power reaches the sequential design's (>{FIXED_MAX}: none up to "
        f"{FIXED_MAX}); at a true 0 there is no power to match. Saved: 1 - sequential / fixed seeds spent.",
        "",
        "| spending | m | regime | items | true effect | false better/worse | power (better) | equivalent | at the cap | seeds per arm | seeds spent | fixed N | fixed spent | saved |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        fixed = c["fixed_n"] <= FIXED_MAX and c["effect"] != 0
        saved = 1 - c["seeds_spent"] / c["fixed_spent"] if fixed else math.nan
        lines.append(
            f"| {c['spending']} | {c['m']} | {c['regime']} | {c['items']} | {100 * c['effect']:+.0f} | "
            f"{_pct(c['false'])} | {_pct(c['power'])} | {_pct(c['equivalent'])} | {_pct(c['at_cap'])} | "
            f"{c['seeds_per_arm']:.1f} | {c['seeds_spent']:.1f} | "
            f"{c['fixed_n'] if fixed else ('-' if c['effect'] == 0 else f'>{FIXED_MAX}')} | "
            f"{c['fixed_spent'] if fixed else '-'} | {_pct(saved)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks sequential", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="a few cells with few draws: seconds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the .md and .json go")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    res = grid(args.smoke)
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sequential-smoke" if args.smoke else "sequential"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (args.out / f"{stem}.md").write_text(render(res, seconds))
    print(render(res, seconds))
    return 0
