"""Per-arm numbers and every comparison, computed from the collected frames (no I/O, no words:
``ablate.report.summary`` turns these into the verdict's sentences).

Task metric: exact match on the test split, recorded per item as 0/1 and shown in
points (x100), so "+2.1 EM" means 2.1 percentage points of exact matches.

Every comparison is paired: the same replicate seed in both arms (same data order)
and the same test items, through the crossed seeds x items t interval of ``ablate.stats``. The
primary family is fixed by the study's design before any data is seen: every
LoRA-containing arm that is not the baseline and not the parameter-matched control
(i.e. each LoRA+X, or LoRA on another base), against the baseline, Holm-adjusted (with
``study.seeds=auto``: the group-sequential design's verdicts, each at alpha / m).
Everything else (matched LoRA, X alone, combination vs matched) is secondary and
reported unadjusted, labelled so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ablate import stats
from ablate.components import BASE
from ablate.report.collect import StudyData, lora_alone
from ablate.stats import sequential, similarity
from ablate.storage import search_of

METRIC, LOSS = "test_em", "test_loss"
COSTS = (
    "trainable_params",
    "trainable_pct",
    "tokens_per_s",
    "step_time_s",
    "peak_mem_mb",
    "base_bytes",
    "wall_s",
)
DEFAULT_SESOI = 0.02  # smallest EM difference of interest: 2 points (study.sesoi records the study's own)
LOSS_SESOI = 0.02  # nats of mean response loss; the loss comparison is reported, the verdict is on EM
LATE_BEST = (
    0.75  # an arm whose best search trial came in the last quarter of its budget may not have converged
)
VERDICT_ORDER = stats.VERDICTS


@dataclass
class Interaction:
    """Does LoRA+X beat X alone as well as LoRA alone? ``vs_single``: (LoRA+X) - X on test EM,
    paired by seed and item (with the primary comparison against LoRA, "better than both" is an
    intersection-union test: no multiplicity penalty). ``diff``/``lo``/``hi``/``p``: the additive
    contrast (LoRA+X) - LoRA - X + zero-shot on the EM scale, kept for what it is: when zero-shot
    EM sits at the floor (0), that term cannot go lower and the contrast is driven by the floor,
    not by how the methods combine."""

    arm: str
    single: str
    vs_single: stats.Comparison
    diff: float
    lo: float
    hi: float
    p: float
    n_seeds: int
    zero_shot: str  # "per item", "mean" or "none": how the zero-shot term entered
    zero_shot_em: float = math.nan  # mean zero-shot EM (0: the additive contrast is floor-driven)


@dataclass
class Summary:
    numbers: pd.DataFrame  # one row per arm, raw units: what summary.csv holds and tests compare
    comparisons: dict[str, stats.Comparison]  # arm -> arm - baseline on test EM
    loss_comparisons: dict[str, stats.Comparison]  # arm -> arm - baseline on test loss
    secondary: dict[str, stats.Comparison]  # "A vs B" -> A - B on test EM (unadjusted)
    interactions: dict[str, Interaction]
    verdict: list[str]  # sentences / bullet lines, computed from the above
    baseline: str
    alpha: float
    sesoi: float
    primary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # search convergence and data notes
    #: arm -> LoRA+X minus its own LoRA settings trained alone (same seeds): what X adds at fixed LoRA
    fixed_lora: dict[str, stats.Comparison] = field(default_factory=dict)
    #: arm -> does X move LoRA's update more than a reseed does (``ablate.stats.similarity``)
    interference: dict[str, similarity.Interference] = field(default_factory=dict)
    #: study.seeds=auto: the recorded design and its looks (``ablate.study.looks``); None: fixed seeds
    sequential: dict[str, Any] | None = None
    #: study.search_repeats: independent searches per arm whose replicates were recorded (1: one)
    searches: int = 1
    #: what an item's score is (``StudyData.metric``): the report's header says it
    metric: str = "exact match on the test split"


def _mean(rep: pd.DataFrame, col: str) -> float:
    return float(rep[col].mean()) if col in rep and rep[col].notna().any() else math.nan


def knockout_reference(rep: pd.DataFrame) -> tuple[float, int | None]:
    """The full model's EM the knockouts compare with: on the knockouts' own items where they
    scored a subset (``eval.knockout_items``), else on the whole split; and that subset's size."""
    col = f"knockout_base/{METRIC}"
    if col in rep.columns and rep[col].notna().any():
        return _mean(rep, col), int(rep["knockout_items"].max())
    return _mean(rep, METRIC), None


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def matched_to(arms: pd.DataFrame, arm: str) -> str | None:
    """The arm a parameter-matched LoRA arm was sized against (pandas may hold a missing one as nan)."""
    value = arms.loc[arm, "matched_to"] if "matched_to" in arms else None
    return value if isinstance(value, str) and value else None


def searches_of(data: StudyData) -> int:
    """How many independent searches of an arm have recorded replicates (``study.search_repeats``)."""
    if not data.searches or not len(data.replicates):
        return 1
    return max((search_of(s) for s in data.replicates["seed"]), default=1)


def order_arms(arms: pd.DataFrame, baseline: str) -> list[str]:
    """Baseline first, the other arms in storage order, the parameter-matched LoRA last."""
    names = list(arms.index)
    matched = [a for a in names if matched_to(arms, a)]
    return [baseline] + [a for a in names if a != baseline and a not in matched] + matched


def primary_family(arms: pd.DataFrame, baseline: str) -> list[str]:
    """The questions the study was designed to ask, against the baseline, fixed by the design and
    not by the data: each LoRA+X (or LoRA on another base), and each named variant arm (an arm with
    fixed fields: ``mam``, a serial or parallel adapter), which a study lists for its own sake.
    The factorial's X-alone arms and matched-lora are controls: secondary. Results made elsewhere
    (``ablate compare``) state their family in a ``primary`` column."""
    if "primary" in arms:
        return [a for a in order_arms(arms, baseline) if a != baseline and bool(arms.loc[a, "primary"])]
    fixed = arms["fixed"] if "fixed" in arms else pd.Series({a: {} for a in arms.index})
    return [
        a
        for a in order_arms(arms, baseline)
        if a != baseline
        and not matched_to(arms, a)
        and (BASE in list(arms.loc[a, "components"]) or bool(fixed.get(a)))
    ]


# --------------------------------------------------------------------------- matrices


def matrix(data: StudyData, arm: str, col: str = "correct") -> pd.DataFrame:
    """Seeds x items of one arm (per-item records), or seeds x 1 of per-seed means when the
    study recorded no items (older studies: no verdict is drawn from those).

    A replicate seed that failed (diverged, non-finite, crashed) counts against its arm: every
    item of it is scored wrong (EM 0) and its loss is the worst loss any run of the study
    recorded on that item. Dropping it from both arms would hide the instability and favour
    the unstable arm."""
    it, failed = data.items, failed_seeds(data, arm)
    metric = METRIC if col == "correct" else LOSS
    if len(it):
        own = it[it["arm"] == arm]
        m = own.pivot(index="seed", columns="item", values=col) if len(own) else None
        if m is None and not failed:
            return pd.DataFrame({0: np.empty(0)})
        if failed:
            worst = it.groupby("item")[col].max()
            m = m if m is not None else pd.DataFrame(columns=worst.index, dtype=float)
            fill = pd.Series(0.0, index=m.columns) if col == "correct" else worst.reindex(m.columns)
            for seed in failed:
                if seed not in m.index:
                    m.loc[seed] = fill
        return m.sort_index()
    rep = data.replicates
    if metric not in rep:
        return pd.DataFrame({0: np.empty(0)})
    rep = rep[rep["arm"] == arm].dropna(subset=[metric])
    m = pd.DataFrame({0: rep[metric].to_numpy(dtype=float)}, index=rep["seed"].to_numpy())
    for seed in failed:
        if seed not in m.index:
            worst = float(data.replicates[metric].max()) if col != "correct" else 0.0
            m.loc[seed] = worst
    return m.sort_index()


def by_search(m: pd.DataFrame, searches: bool = True) -> pd.DataFrame:
    """``study.search_repeats``: one row per search, the mean of its seeds (a seed names its search,
    ``ablate.storage.search_of``), so that the rows are independent draws of the whole procedure:
    search, pick, train. Seeds of one search share its configuration: as rows of their own they
    would count that one choice as many (the harness measured their interval covering 88.5-94.5% where
    the choice matters, ``benchmarks/results/calibration.md``). One search, or ``searches`` False
    (a study recorded without search repeats, results made elsewhere: their seeds are any numbers):
    ``m`` as it is."""
    if not searches:
        return m
    index = pd.Index([search_of(s) for s in m.index], name="search")
    if index.nunique() < 2:
        return m
    return m.groupby(index).mean()  # an Index, not a list: a list would name columns


def aligned(a: pd.DataFrame, b: pd.DataFrame, searches: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The seeds and items present in both (per-item vs seed-only records fall back to seed means),
    paired by seed, then (several searches) one row per search (:func:`by_search`)."""
    if (a.shape[1] == 1) != (b.shape[1] == 1):
        a, b = (pd.DataFrame({0: m.mean(axis=1)}) for m in (a, b))
    seeds = a.index.intersection(b.index)
    items = a.columns.intersection(b.columns)
    a, b = a.loc[seeds, items], b.loc[seeds, items]
    keep = a.notna().all(axis=1) & b.notna().all(axis=1)
    a, b = by_search(a[keep], searches), by_search(b[keep], searches)
    return a.to_numpy(dtype=float), b.to_numpy(dtype=float)


def compare_arms(data: StudyData, arm: str, base: str, metric: str, sesoi: float, alpha: float):
    col = "correct" if metric == "em" else "loss"
    a, b = aligned(matrix(data, arm, col), matrix(data, base, col), data.searches)
    return stats.compare(a, b, metric=metric, sesoi=sesoi, alpha=alpha)


def failed_seeds(data: StudyData, arm: str) -> list[int]:
    """Replicate seeds of ``arm`` that diverged, went non-finite or failed, and never completed."""
    f = data.failures
    return sorted(int(x) for x in f.loc[f["arm"] == arm, "seed"]) if len(f) else []


def interaction(
    data: StudyData, arm: str, baseline: str, sesoi: float = 0.02, alpha: float = 0.05
) -> Interaction | None:
    """LoRA+X against X alone, and the additive contrast, for a two-component arm whose X-alone
    arm is in the study."""
    comps = list(data.arms.loc[arm, "components"])
    if len(comps) != 2 or BASE not in comps:
        return None
    x = next(c for c in comps if c != BASE)
    single = next((a for a in data.arms.index if list(data.arms.loc[a, "components"]) == [x]), None)
    if single is None:
        return None
    mats = [matrix(data, a) for a in (arm, baseline, single)]
    seeds = mats[0].index.intersection(mats[1].index).intersection(mats[2].index)
    items = mats[0].columns.intersection(mats[1].columns).intersection(mats[2].columns)
    if len(seeds) == 0 or len(items) == 0:
        return None
    lx, lo, xo = (by_search(m.loc[seeds, items], data.searches).to_numpy(dtype=float) for m in mats)
    if np.isnan(lx).any() or np.isnan(lo).any() or np.isnan(xo).any():
        return None
    vs_single = stats.compare(lx, xo, metric="em", sesoi=sesoi, alpha=alpha)
    d = lx - lo - xo
    how, zero_em = "none", math.nan
    it = data.items
    zs = it[(it["arm"] == baseline)] if "zero_shot_correct" in it else it.iloc[0:0]
    zs = zs.dropna(subset=["zero_shot_correct"]) if len(zs) else zs
    if len(zs):  # the bare base is deterministic: one seed's per-item zero-shot serves every seed
        first = zs[zs["seed"] == zs["seed"].min()].set_index("item")["zero_shot_correct"]
        zero = first.reindex(items).to_numpy(dtype=float)
        d = d + zero[None, :]
        how, zero_em = "per item", float(np.nanmean(zero))
    elif f"zero_shot/{METRIC}" in data.replicates and data.replicates[f"zero_shot/{METRIC}"].notna().any():
        zero_em = float(data.replicates[f"zero_shot/{METRIC}"].mean())
        d = d + zero_em
        how = "mean"
    if np.isnan(d).any():
        return None
    mean, lo_, hi_, p = stats.contrast(d, confidence=1 - alpha)
    return Interaction(arm, single, vs_single, mean, lo_, hi_, p, len(seeds), how, zero_em)


# --------------------------------------------------------------------------- numbers


def numbers_frame(data: StudyData, baseline: str, sesoi: float, alpha: float):
    reps, trials = data.replicates, data.trials
    base_rep = reps[reps["arm"] == baseline]
    base_costs = {c: _mean(base_rep, c) for c in COSTS}
    primary = primary_family(data.arms, baseline)
    rows, comps, loss_comps = [], {}, {}
    for arm in order_arms(data.arms, baseline):
        rep = reps[reps["arm"] == arm]
        em, loss = matrix(data, arm), matrix(data, arm, "loss")
        em_iv = stats.interval(by_search(em.dropna(), data.searches).to_numpy(dtype=float))  # (mean, lo, hi)
        # a rate lies in [0, 1]: with 3 seeds (t with 2 df) the t interval of one arm easily passes 100
        em_iv = (em_iv[0], max(em_iv[1], 0.0), min(em_iv[2], 1.0)) if em_iv[1] == em_iv[1] else em_iv
        loss_iv = stats.interval(by_search(loss.dropna(), data.searches).to_numpy(dtype=float))
        costs = {c: _mean(rep, c) for c in COSTS}
        row: dict[str, Any] = {
            "arm": arm,
            "seeds": len(em),
            "items": em.shape[1] if len(em) and em.shape[1] > 1 else 0,
            "seeds_failed": len(failed_seeds(data, arm)),
            **dict(zip(("em_mean", "em_lo", "em_hi"), em_iv, strict=True)),
            **dict(zip(("loss_mean", "loss_lo", "loss_hi"), loss_iv, strict=True)),
            **costs,
            "params_ratio": _ratio(costs["trainable_params"], base_costs["trainable_params"]),
            "step_time_ratio": _ratio(costs["step_time_s"], base_costs["step_time_s"]),
            "mem_ratio": _ratio(costs["peak_mem_mb"], base_costs["peak_mem_mb"]),
            "primary": arm in primary,
        }
        if arm != baseline:
            comps[arm] = compare_arms(data, arm, baseline, "em", sesoi, alpha)
            loss_comps[arm] = compare_arms(data, arm, baseline, "loss", LOSS_SESOI, alpha)
        st = trials[trials["arm"] == arm]["state"] if len(trials) else pd.Series(dtype=str)
        for state in ("complete", "pruned", "failed"):
            row[f"trials_{state}"] = int((st == state).sum())
        rows.append(row)
    comps = sequential_verdicts(data, stats.holm_family(comps, primary), primary, baseline)
    df = pd.DataFrame(rows).set_index("arm", drop=False)
    fields = ("diff", "se", "lo", "hi", "lo90", "hi90", "p", "p_adj", "p_seed", "hedges_g", "mde", "tost_p")
    fields += ("seeds_needed", "df", "ci_level", "sequential")
    for col in (*fields, "status", "verdict"):
        df[f"delta_{col}"] = [getattr(comps[a], col) if a in comps else None for a in df.index]
    for part in ("seed", "item", "resid"):
        df[f"delta_var_{part}"] = [
            getattr(comps[a].variance, part) if a in comps and comps[a].variance else None for a in df.index
        ]
    for col in ("diff", "lo", "hi", "p"):
        df[f"loss_delta_{col}"] = [getattr(loss_comps[a], col) if a in loss_comps else None for a in df.index]
    return df, comps, loss_comps, primary


STOPS = {  # why a comparison of a group-sequential study stopped, in words
    sequential.DECIDED: "decided",
    sequential.EQUIVALENT: "shown equivalent",
    sequential.FUTILE: "stopped for futility (too unlikely to be decided by the cap)",
    sequential.NO_VERDICT: "stopped: the arms cannot be told apart on this task",
}


def sequential_state(data: StudyData, baseline: str) -> dict[str, Any] | None:
    """The recorded group-sequential design and its looks (``study.seeds=auto``), else None."""
    study = data.studies.get(baseline)
    return (study.user_attrs.get("sequential") or None) if study is not None else None


def sequential_verdicts(
    data: StudyData, comps: dict[str, stats.Comparison], primary: list[str], baseline: str
) -> dict[str, stats.Comparison]:
    """``study.seeds=auto``: each primary comparison's verdict is the one its design reached at the
    look it stopped at (``ablate.study.looks``), with the repeated confidence interval at that
    look's level (it covers at the design's rate whenever the study stopped); no Holm (each
    comparison spent alpha / m) and no seeds plan: an open comparison at the cap is
    "inconclusive at the cap of N seeds", never a guess."""
    state = sequential_state(data, baseline)
    if not state:
        return comps
    out, looks, cap = dict(comps), state.get("looks") or [], state["design"]["looks"][-1]
    for arm in primary:
        seen = [(look, look["steps"][arm]) for look in looks if arm in look["steps"]]
        if arm not in comps or not seen:
            continue
        look, step = seen[-1]
        c, level = comps[arm], float(step["boundary_p"])
        lo, hi = c.lo, c.hi
        if c.se > 0 and math.isfinite(c.df):
            half = float(scipy_stats.t.ppf(1 - level / 2, c.df)) * c.se
            lo, hi = c.diff - half, c.diff + half
        where = f"look {look['look'] + 1} of {len(state['design']['looks'])} ({look['seeds']} seeds)"
        reason = step["reason"]
        plan = ""
        if reason == sequential.CAP:
            plan = f"at the cap of {cap} seeds (group-sequential design)"
            text = f"inconclusive {plan}"
        elif reason == sequential.OPEN:
            text = f"still open after {where}: the study has more looks to take"
        else:
            p = step.get("p")
            against = f": p={p:.2g} against the look's boundary {level:.2g}" if p is not None else ""
            text = f"group-sequential design: {STOPS[reason]} at {where}{against}"
        out[arm] = dataclasses.replace(
            c, verdict=step["verdict"], lo=lo, hi=hi, p_adj=math.nan, seeds_needed=None,
            more_items_needed=False, plan_note=plan or text, ci_level=1 - level, sequential=text,
        )  # fmt: skip
    return out


def fixed_lora_comparisons(data: StudyData, arms: list[str], sesoi: float, alpha: float):
    """Each combination against its own LoRA settings trained alone on the same seeds (secondary,
    unadjusted): what X adds with LoRA held fixed, free of the baseline's different tuning."""
    have = set(data.items["arm"]) | set(data.failures["arm"])
    return {
        a: compare_arms(data, a, lora_alone(a), "em", sesoi, alpha) for a in arms if lora_alone(a) in have
    }


def interference_readings(data: StudyData, alpha: float) -> dict[str, similarity.Interference]:
    """Per combination recorded with LoRA held fixed: with-X cosines per seed vs reseed pairs."""
    inter = data.interference
    out = {}
    for arm, g in inter[inter["kind"] != "tuned alone"].groupby("arm", sort=False):
        with_x = g[g["kind"] == "with X"]
        pairs = g[g["kind"] == "reseed"]
        out[arm] = similarity.interference(
            dict(zip(with_x["seed"], with_x["cos"], strict=True)),
            {
                (int(a), int(b)): c
                for a, b, c in zip(pairs["seed"], pairs["seed2"], pairs["cos"], strict=True)
            },
            confidence=1 - alpha,
        )
    return out


def secondary_comparisons(data: StudyData, numbers: pd.DataFrame, sesoi: float, alpha: float):
    """Each combination against the LoRA arm parameter-matched to it (same trainable-parameter budget)."""
    out = {}
    for arm in numbers.index:
        target = matched_to(data.arms, arm)
        if target and target in numbers.index:
            out[f"{target} vs {arm}"] = compare_arms(data, target, arm, "em", sesoi, alpha)
    return out


@dataclass
class SearchCurve:
    """One arm's search in trial order: ``value`` (nan unless complete) and ``best`` so far."""

    objective: str
    budget: int | None
    trials: pd.DataFrame  # number, value, best
    #: the expected best of n trials, n = 1..(complete trials): ``expected_best``
    expected: np.ndarray = field(default_factory=lambda: np.empty(0))


def expected_best(values: np.ndarray, minimize: bool) -> np.ndarray:
    """Dodge et al. (2019), "Show your work": the expected best of ``n`` trials drawn with
    replacement from these values, for n = 1..N (N = how many there are). With the values ordered
    from worst to best, the best of n draws is the i-th with probability ``(i/N)^n - ((i-1)/N)^n``.
    A flat curve at the right end says more trials would have found little; still rising, that
    the arm's search was cut short. (Optuna has no such curve; it is three lines.)"""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[::-1] if minimize else v  # worst first
    n_all = len(v)
    i = np.arange(1, n_all + 1)
    return np.array([np.sum(((i / n_all) ** n - ((i - 1) / n_all) ** n) * v) for n in i])


def search_curve(data: StudyData, arm: str) -> SearchCurve | None:
    """None for multi-objective arms and arms without a complete search trial."""
    t = data.trials
    objective = data.arms.loc[arm, "objective"]
    directions = data.arms.loc[arm, "directions"] if "directions" in data.arms else ["minimize"]
    col = f"value.{objective[0]}"
    if not len(t) or col not in t or len(directions) != 1:
        return None
    at = t[t["arm"] == arm].sort_values("number")
    values = at[col].where(at["state"] == "complete").astype(float)
    if values.notna().sum() == 0:
        return None
    best = (values.cummin() if directions[0] == "minimize" else values.cummax()).ffill()
    budget = data.arms.loc[arm, "n_trials_budget"] if "n_trials_budget" in data.arms else None
    frame = pd.DataFrame(
        {"number": at["number"].to_numpy(), "value": values.to_numpy(), "best": best.to_numpy()}
    )
    done = values.dropna().to_numpy()
    expected = expected_best(done, directions[0] == "minimize")
    return SearchCurve(objective[0], int(budget) if budget else None, frame, expected)


def compute(
    data: StudyData, baseline: str = BASE, alpha: float = 0.05, sesoi: float | None = None
) -> Summary:
    """Every comparison and per-arm number of a study; ``summary.summarise`` adds the words."""
    if sesoi is None:
        recorded = data.studies[baseline].user_attrs.get("sesoi") if baseline in data.studies else None
        sesoi = float(recorded) if recorded is not None else DEFAULT_SESOI
    numbers, comps, loss_comps, primary = numbers_frame(data, baseline, sesoi, alpha)
    s = Summary(
        numbers,
        comps,
        loss_comps,
        secondary_comparisons(data, numbers, sesoi, alpha),
        {a: it for a in numbers.index if (it := interaction(data, a, baseline, sesoi, alpha)) is not None},
        [],
        baseline,
        alpha,
        sesoi,
        primary,
        [],
        fixed_lora_comparisons(data, list(numbers.index), sesoi, alpha),
        interference_readings(data, alpha),
        sequential_state(data, baseline),
        searches_of(data),
    )
    for arm, c in s.fixed_lora.items():
        numbers.loc[arm, ["fixed_lora_diff", "fixed_lora_lo", "fixed_lora_hi"]] = [c.diff, c.lo, c.hi]
    for arm, r in s.interference.items():
        cols = ["interference_cos", "interference_reseed_cos", "interference_diff_z"]
        numbers.loc[arm, [*cols, "interference_lo", "interference_hi"]] = [
            r.cos_with_x, r.cos_reseed, r.diff, r.lo, r.hi,
        ]  # fmt: skip
    for arm, it in s.interactions.items():
        numbers.loc[arm, ["interaction_diff", "interaction_lo", "interaction_hi"]] = [it.diff, it.lo, it.hi]
        c = it.vs_single
        numbers.loc[arm, ["vs_single_diff", "vs_single_lo", "vs_single_hi"]] = [c.diff, c.lo, c.hi]
    return s
