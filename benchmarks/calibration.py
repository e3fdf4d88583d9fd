"""How often is the verdict wrong? The calibration grid of ``ablate.stats.simulate``.

    python -m benchmarks calibration            # full grid -> benchmarks/results/calibration.{md,json}
    python -m benchmarks calibration --smoke    # a few cells, seconds (the test suite runs this)

Every regime (item-dominated to seed-dominated, binary EM and continuous loss) x design (2-20
seeds, 64-2,000 items) x true effect (0, ±sesoi/2, ±sesoi, ±2 sesoi; sesoi = 2 points): coverage
of the 95% interval, false better/worse at a true 0, "equivalent" at 0 and at the margin, and
power; the old two-way bootstrap beside it at a true 0; the family-wise rate under Holm; and
whether "would need about N seeds" keeps its promise when a study tops up to N; and the coverage of
the interference interval (does X move LoRA's update more than a reseed does).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from ablate.stats import MIN_SEEDS, POWER
from ablate.stats import simulate as S

RESULTS = Path(__file__).resolve().parent / "results"
COVERAGE_MIN, FALSE_MAX = 0.93, 0.06  # the bounds the core must meet with MIN_SEEDS or more seeds


def grid(smoke: bool) -> dict:
    regimes = list(S.REGIMES) if not smoke else ["seed-dominated"]
    seeds = (2, 3, 5, 10, 20) if not smoke else (3,)
    items = (64, 400, 2000) if not smoke else (64,)
    effects = (0.0, 0.01, -0.01, 0.02, -0.02, 0.04, -0.04) if not smoke else (0.0, 0.02)
    reps, boot_reps, plan_reps, fam_reps = (1000, 200, 150, 300) if not smoke else (50, 10, 5, 10)
    out: dict = {"cells": [], "bootstrap": [], "family": [], "plan": []}
    for r in regimes:
        for s in seeds:
            for i in items:
                for e in effects:
                    m = S.measure(S.REGIMES[r], e, s, i, n_reps=reps, seed=1)
                    out["cells"].append({"regime": r, "seeds": s, "items": i, "effect": e, **m})
                m = S.measure(S.REGIMES[r], 0.0, s, i, n_reps=boot_reps, seed=1, method="bootstrap (old)")
                out["bootstrap"].append({"regime": r, "seeds": s, "items": i, "effect": 0.0, **m})
        if S.REGIMES[r].binary:
            for s, i in ((3, 200), (5, 400)) if not smoke else ((3, 64),):
                rate = S.measure_family(S.REGIMES[r], 3, s, i, n_reps=fam_reps, seed=1)
                out["family"].append({"regime": r, "arms": 3, "seeds": s, "items": i, "rate": rate})
            for i in (400, 2000) if not smoke else (64,):
                for e in (0.0, S.SESOI):
                    m = S.measure_plan(S.REGIMES[r], e, i, n_reps=plan_reps, seed=1)
                    out["plan"].append({"regime": r, "items": i, "effect": e, **m})
    out["interference"] = interference_grid(smoke)
    out["search"] = search_grid(smoke)
    out["tasks"] = tasks_grid(smoke)
    confirm(out, 4 * reps)
    return out


def interference_grid(smoke: bool) -> list[dict]:
    """Coverage of the interference interval (``ablate.stats.similarity``) and its readings, over
    LoRA-update regimes with a known truth; the null regimes (X moves LoRA exactly as far as a
    reseed) give the false "less/more than a reseed" rate."""
    null = [S.null_update_regime(r, u) for r in (0.3, 1.0, 2.0) for u in (0.0, 0.5, 1.0)]
    regimes = null + S.UPDATE_REGIMES if not smoke else null[:1]
    rows = []
    for r in regimes:
        truth = S.interference_truth(r)
        for n in (3, 5, 10) if not smoke else (3,):
            m = S.measure_interference(r, n, n_reps=1000 if not smoke else 50, seed=1, truth=truth)
            rows.append({"regime": r.name, "null": r in null, "seeds": n, **m})
    return rows


def search_grid(smoke: bool) -> list[dict]:
    """``study.search_repeats``: coverage of the true effect over the choice of configuration, for
    the report's interval (searches as rows), every seed as a row, and one search's seeds alone."""
    regimes = ("moderate", "seed-dominated") if not smoke else ("moderate",)
    designs = ((3, 1), (3, 2), (5, 1), (5, 2)) if not smoke else ((3, 2),)
    rows = []
    for r in regimes:
        for sd in S.CONFIG_SDS if not smoke else (0.3,):
            for searches, seeds in designs:
                for e in (0.0, S.SESOI):
                    m = S.measure_search(
                        S.REGIMES[r], sd, searches, seeds, 200, e, n_reps=1000 if not smoke else 50, seed=1
                    )
                    rows.append(
                        {"regime": r, "config_sd": sd, "searches": searches, "seeds": seeds, "effect": e, **m}
                    )
    return rows


def tasks_grid(smoke: bool) -> list[dict]:
    """``study.tasks``: the pooled interval over 3-8 tasks whose true effects differ (sd ``tau``)
    covers their mean, the prediction interval a new task's effect; three ways to pool."""
    regimes = ("moderate", "seed-dominated") if not smoke else ("moderate",)
    rows = []
    for r in regimes:
        for k in (3, 5, 8) if not smoke else (3,):
            for tau in (0.0, 0.02, 0.04) if not smoke else (0.02,):
                for mu in (0.0, S.SESOI) if not smoke else (0.0,):
                    m = S.measure_meta(
                        S.REGIMES[r], mu, tau, k, 3, 200, n_reps=1000 if not smoke else 40, seed=1
                    )
                    rows.append({"regime": r, "tasks": k, "tau": tau, "mu": mu, **m})
    return rows


def _outside(c: dict) -> bool:
    return c["seeds"] >= MIN_SEEDS and (c["coverage"] < COVERAGE_MIN or c["better"] + c["worse"] > FALSE_MAX)


def confirm(res: dict, reps: int) -> None:
    """A null cell outside the bounds is measured again on ``reps`` fresh draws (another seed):
    with 1,000 draws a true 95% cell lands below 93.5% about one time in 40, and the grid has 60
    such cells, so a single miss may be Monte Carlo noise. Both measurements are shown."""
    for c in res["cells"]:
        if c["effect"] == 0.0 and _outside(c) and "confirm" not in c:
            m = S.measure(S.REGIMES[c["regime"]], 0.0, c["seeds"], c["items"], n_reps=reps, seed=2)
            c["confirm"] = m


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def render(res: dict, seconds: float) -> str:
    lines = [
        f"# Verdict calibration ({date.today().isoformat()})",
        "",
        f"`python -m benchmarks calibration`, {seconds / 60:.1f} min on {platform.processor() or 'this CPU'}. "
        "Simulated (seeds x items) outcomes with a known true effect (`ablate/stats/simulate.py`: item "
        "difficulty, item x arm, per-seed shifts correlated between arms, seed x item noise); sesoi = 2 "
        "points. Rates in percent over the draws of each cell (1,000 per cell for the current core; 200 for "
        "the old bootstrap). Bounds for the current core with "
        f"{MIN_SEEDS}+ seeds: coverage >= {100 * COVERAGE_MIN:.0f}%, false better/worse <= {100 * FALSE_MAX:.0f}%. "
        f"With fewer than {MIN_SEEDS} seeds the core draws no verdict (false rate 0 by construction).",
        "",
        "Regimes (binary EM unless marked loss): "
        + "; ".join(
            f"**{r.name}** (per-seed SD of one arm on 400 items {100 * S.per_seed_sd(r):.1f}"
            + (" points)" if r.binary else " x 0.01 nats)")
            for r in S.REGIMES.values()
        ),
        "",
        "## Identical arms (true effect 0): current core vs the old two-way bootstrap",
        "",
        "| regime | seeds | items | coverage | false better/worse | equivalent | old: coverage | old: false better/worse | within bounds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    boot = {(b["regime"], b["seeds"], b["items"]): b for b in res["bootstrap"]}
    fails = 0
    for c in (c for c in res["cells"] if c["effect"] == 0.0):
        b = boot[(c["regime"], c["seeds"], c["items"])]
        false = c["better"] + c["worse"]
        shown, ok = "yes", not _outside(c)
        if not ok and "confirm" in c:
            m = c["confirm"]
            ok = not _outside({**m, "seeds": c["seeds"]})
            shown = (
                f"{'yes' if ok else '**no**'}: on {m['n']:,} fresh draws {_pct(m['coverage'])} / "
                f"{_pct(m['better'] + m['worse'])}"
            )
        elif not ok:
            shown = "**no**"
        fails += not ok
        lines.append(
            f"| {c['regime']} | {c['seeds']} | {c['items']} | {_pct(c['coverage'])} | {_pct(false)} | "
            f"{_pct(c['equivalent'])} | {_pct(b['coverage'])} | {_pct(b['better'] + b['worse'])} | {shown} |"
        )
    lines += [
        "",
        f"Cells with {MIN_SEEDS}+ seeds outside the bounds: **{fails}** (a cell that missed on its "
        "1,000 draws was measured again on 4,000 fresh ones; both are shown).",
        "",
        "## Power, coverage and equivalence at true effects (current core)",
        "",
        "Power = the right direction called (better at +, worse at -); wrong = the opposite call; "
        "equivalent = equivalence shown (at ±sesoi this is the TOST's error, bound 5%).",
        "",
        "| regime | seeds | items | effect | coverage | power | wrong direction | equivalent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in (c for c in res["cells"] if c["effect"] != 0.0):
        right, wrong = (c["better"], c["worse"]) if c["effect"] > 0 else (c["worse"], c["better"])
        lines.append(
            f"| {c['regime']} | {c['seeds']} | {c['items']} | {100 * c['effect']:+.0f} | {_pct(c['coverage'])} | "
            f"{_pct(right)} | {_pct(wrong)} | {_pct(c['equivalent'])} |"
        )
    lines += [
        "",
        "## Family-wise false better/worse under Holm (3 identical arms vs one baseline)",
        "",
        "| regime | seeds | items | family-wise rate |",
        "| --- | --- | --- | --- |",
        *(f"| {f['regime']} | {f['seeds']} | {f['items']} | {_pct(f['rate'])} |" for f in res["family"]),
        "",
        '## Does "would need about N seeds" keep its promise?',
        "",
        f"First round of {MIN_SEEDS} seeds; every inconclusive one with a plan is topped up to the plan "
        "on the same items, and the right decision is counted (better at a true +sesoi, equivalent at "
        f"a true 0). Promised: {100 * POWER:.0f}%. 'no plan' rounds were told that no number of seeds "
        "would do (the item term alone is too large: raise the test set).",
        "",
        "| regime | items | true effect | reached | topped up | decided at once | no plan (items) | over cap | median plan |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {p['regime']} | {p['items']} | {100 * p['effect']:+.0f} | {_pct(p['reached'])} | {p['planned']} | "
            f"{p['decided_first']} | {p['no_plan']} | {p['over_cap']} | "
            + ("-" if p["median_seeds"] != p["median_seeds"] else f"{p['median_seeds']:.0f}")
            + " |"
            for p in res["plan"]
        ),
        "",
        f"A plan promises at least {100 * POWER:.0f}%: where the items dominate, three seeds say little about "
        "the seed term, so the plan averages over its uncertainty and over-delivers (the sequential design "
        "of `study.seeds=auto`, when it lands, spends seeds look by look instead).",
        "",
        *interference_section(res.get("interference") or []),
        *search_section(res.get("search") or []),
        *tasks_section(res.get("tasks") or []),
    ]
    return "\n".join(lines)


def interference_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cov = [r["coverage"] for r in rows]
    false = [r["less"] + r["more"] for r in rows if r["null"]]
    lines = [
        "## Interference: does X move LoRA's update more than a reseed does?",
        "",
        "`ablate.stats.similarity`: cosines of LoRA's update beside X vs the same LoRA settings alone (same "
        "seed), against LoRA alone across seeds, compared on Fisher's z scale with a delete-one-seed "
        "jackknife 95% interval. Simulated updates (`simulate.UpdateRegime`): `reseed` = how far a new seed "
        "moves LoRA (0.3: cosine ~0.9 across seeds, 2: ~0.2), X a mild or strong per-run push or a pull "
        "towards one direction, `uneven` = per-seed spread of that noise (1: one run may wander e-fold "
        "further than another). 'X as a reseed' regimes have a true difference of 0: a 'less' or 'more' "
        "reading there is false. 1,000 draws per cell.",
        "",
        f"Coverage {_pct(min(cov))}-{_pct(max(cov))}% over {len(rows)} cells; false readings at a true 0: "
        f"{_pct(min(false))}-{_pct(max(false))}%."
        if false
        else f"Coverage {_pct(min(cov))}-{_pct(max(cov))}%.",
        "",
        "| regime | seeds | true Δz | coverage | reads 'less' | reads 'more' |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['regime']} | {r['seeds']} | {r['truth']:+.3f} | {_pct(r['coverage'])} | {_pct(r['less'])} | "
            f"{_pct(r['more'])} |"
            for r in rows
        ),
        "",
    ]
    return lines


def search_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    ours = [r["coverage/repeats"] for r in rows if r["config_sd"] > 0]
    one = [r["coverage/one search"] for r in rows if r["config_sd"] > 0]
    return [
        "## Search repeats: does the interval cover the choice of configuration?",
        "",
        "`study.search_repeats=k`: each arm is searched k times independently and each search's best is "
        "replicated on seeds of its own. Simulated (`simulate.measure_search`): each search picks a "
        "configuration whose quality is a draw of sd `config sd` on the logit scale (0.15: about 2-3 EM "
        "points between two searches' picks at a 36% baseline; the toy TPE simulation of the issue moved "
        "the gap by 1.6-2.4 points); 200 items; the truth is the effect averaged over the choice. "
        "**searches as rows** is the report's interval (each search's seeds averaged, then the crossed "
        "core over searches x items); **every seed a row** treats the searches' seeds as exchangeable; "
        "**one search** spends the same seeds on one search's best (today's study with k x seeds seeds). "
        "Coverage of the 95% interval; false better/worse at a true 0 in brackets. 1,000 draws per cell.",
        "",
        f"With a configuration term (config sd > 0): searches as rows cover {_pct(min(ours))}-"
        f"{_pct(max(ours))}%; one search with as many seeds covers {_pct(min(one))}-{_pct(max(one))}%.",
        "",
        "| regime | config sd | searches x seeds | true effect | searches as rows | every seed a row | one search |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['regime']} | {r['config_sd']:.2f} | {r['searches']} x {r['seeds']} | {100 * r['effect']:+.0f} | "
            + " | ".join(
                _pct(r[f"coverage/{k}"]) + (f" ({_pct(r[f'false/{k}'])})" if f"false/{k}" in r else "")
                for k in ("repeats", "pooled seeds", "one search")
            )
            + " |"
            for r in rows
        ),
        "",
    ]


def tasks_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    from ablate.stats import meta

    ours = [r[f"coverage/{meta.HKSJ_FLOOR}"] for r in rows]
    normal = [r[f"coverage/{meta.NORMAL}"] for r in rows]
    pred = [r["prediction"] for r in rows]
    false = [r[f"false/{meta.HKSJ_FLOOR}"] for r in rows if "false/" + meta.HKSJ_FLOOR in r]
    cols = (meta.HKSJ_FLOOR, meta.HKSJ, meta.NORMAL)
    return [
        "## Tasks: the pooled effect over tasks whose effects differ",
        "",
        "`study.tasks`: each task's paired effect (3 seeds x 200 items, the crossed core) pooled by a "
        "random-effects meta-analysis (`ablate.stats.meta`: statsmodels `combine_effects`, Paule-Mandel "
        "tau^2). The tasks' true effects (EM) are drawn N(mu, tau^2); the pooled 95% interval should cover "
        "mu, the 95% prediction interval a new task's effect. Three intervals: **HKSJ, floor 1** (the "
        "report's: Hartung-Knapp-Sidik-Jonkman with its scale never below 1, t with k-1 df), plain **HKSJ**, "
        "and the **normal** random-effects interval. False better/worse of the pooled verdict at mu = 0 in "
        "brackets. 1,000 draws per cell.",
        "",
        f"The report's pooled interval covers {_pct(min(ours))}-{_pct(max(ours))}% (false better/worse "
        f"{_pct(min(false))}-{_pct(max(false))}%); the normal interval {_pct(min(normal))}-{_pct(max(normal))}%. "
        f"The prediction interval covers a new task's effect {_pct(min(pred))}-{_pct(max(pred))}%: below 95% "
        "where the tasks differ by about as much as one task's own error (tau^2 is then often estimated as 0), "
        "so the report reads it as a lower bound on the spread a new task may show.",
        "",
        "| regime | tasks | tau | mu | " + " | ".join(cols) + " | prediction | mean tau^2 |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in cols) + " | --- | --- |",
        *(
            f"| {r['regime']} | {r['tasks']} | {100 * r['tau']:.0f} | {100 * r['mu']:+.0f} | "
            + " | ".join(
                _pct(r[f"coverage/{c}"]) + (f" ({_pct(r[f'false/{c}'])})" if f"false/{c}" in r else "")
                for c in cols
            )
            + f" | {_pct(r['prediction'])} | {r['tau2']:.5f} |"
            for r in rows
        ),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few cells with few draws: seconds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for calibration.md / .json")
    ap.add_argument("--from-json", type=Path, help="re-render (and confirm) a grid measured before")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.from_json:
        res = json.loads(args.from_json.read_text(encoding="utf-8"))
        if "interference" not in res:  # a grid measured before the interference section existed
            res["interference"] = interference_grid(smoke=False)
        if "search" not in res:  # ... or the search-repeats section
            res["search"] = search_grid(smoke=False)
        if "tasks" not in res:  # ... or the tasks section
            res["tasks"] = tasks_grid(smoke=False)
        confirm(res, 4000)
    else:
        res = grid(args.smoke)
    seconds = res.setdefault("seconds", time.perf_counter() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "calibration-smoke" if args.smoke else "calibration"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    (args.out / f"{stem}.md").write_text(render(res, seconds), encoding="utf-8")
    print(f"wrote {args.out / stem}.md in {seconds:.0f} s")
    return 0
