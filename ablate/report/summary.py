"""Per-arm numbers and the verdict, computed from the collected frames (no I/O here).

Task metric: exact match on the test split, recorded per item as 0/1 and shown in
points (x100), so "+2.1 EM" means 2.1 percentage points of exact matches.

Every comparison is paired: the same replicate seed in both arms (same data order)
and the same test items, through the crossed seeds x items t interval of ``ablate.stats``. The
primary family is fixed by the study's design before any data is seen: every
LoRA-containing arm that is not the baseline and not the parameter-matched control
(i.e. each LoRA+X, or LoRA on another base), against the baseline, Holm-adjusted.
Everything else (matched LoRA, X alone, combination vs matched) is secondary and
reported unadjusted, labelled so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ablate import stats
from ablate.report.collect import StudyData, lora_alone
from ablate.stats import similarity

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


def pts(x: float, sign: bool = True) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_config(cfg: dict[str, Any]) -> str:
    def val(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return "; ".join(
        f"{comp}: " + ", ".join(f"{k}={val(v)}" for k, v in fields.items())
        if isinstance(fields, dict)
        else f"{comp}={val(fields)}"
        for comp, fields in cfg.items()
    )


def arm_config(arms: pd.DataFrame, arm: str) -> str:
    """The best searched configuration, then a variant arm's fixed fields, marked as such."""
    fixed = arms.loc[arm, "fixed"] if "fixed" in arms else None
    best = fmt_config(arms.loc[arm, "best_config"])
    if not isinstance(fixed, dict) or not fixed:
        return best
    return "; ".join(x for x in (best, "fixed " + fmt_config(fixed)) if x)


def _mean(rep: pd.DataFrame, col: str) -> float:
    return float(rep[col].mean()) if col in rep and rep[col].notna().any() else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def matched_to(arms: pd.DataFrame, arm: str) -> str | None:
    """The arm a parameter-matched LoRA arm was sized against (pandas may hold a missing one as nan)."""
    value = arms.loc[arm, "matched_to"] if "matched_to" in arms else None
    return value if isinstance(value, str) and value else None


def order_arms(arms: pd.DataFrame, baseline: str) -> list[str]:
    """Baseline first, the other arms in storage order, the parameter-matched LoRA last."""
    names = list(arms.index)
    matched = [a for a in names if matched_to(arms, a)]
    return [baseline] + [a for a in names if a != baseline and a not in matched] + matched


def primary_family(arms: pd.DataFrame, baseline: str) -> list[str]:
    """The questions the study was designed to ask, against the baseline, fixed by the design and
    not by the data: each LoRA+X (or LoRA on another base), and each named variant arm (an arm with
    fixed fields: ``mam``, a serial or parallel adapter), which a study lists for its own sake.
    The factorial's X-alone arms and matched-lora are controls: secondary."""
    fixed = arms["fixed"] if "fixed" in arms else pd.Series({a: {} for a in arms.index})
    return [
        a
        for a in order_arms(arms, baseline)
        if a != baseline
        and not matched_to(arms, a)
        and ("lora" in list(arms.loc[a, "components"]) or bool(fixed.get(a)))
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


def aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The seeds and items present in both (per-item vs seed-only records fall back to seed means)."""
    if (a.shape[1] == 1) != (b.shape[1] == 1):
        a, b = (pd.DataFrame({0: m.mean(axis=1)}) for m in (a, b))
    seeds = a.index.intersection(b.index)
    items = a.columns.intersection(b.columns)
    a, b = a.loc[seeds, items], b.loc[seeds, items]
    keep = a.notna().all(axis=1) & b.notna().all(axis=1)
    return a[keep].to_numpy(dtype=float), b[keep].to_numpy(dtype=float)


def _compare(data: StudyData, arm: str, base: str, metric: str, sesoi: float, alpha: float):
    col = "correct" if metric == "em" else "loss"
    a, b = aligned(matrix(data, arm, col), matrix(data, base, col))
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
    if len(comps) != 2 or "lora" not in comps:
        return None
    x = next(c for c in comps if c != "lora")
    single = next((a for a in data.arms.index if list(data.arms.loc[a, "components"]) == [x]), None)
    if single is None:
        return None
    mats = [matrix(data, a) for a in (arm, baseline, single)]
    seeds = mats[0].index.intersection(mats[1].index).intersection(mats[2].index)
    items = mats[0].columns.intersection(mats[1].columns).intersection(mats[2].columns)
    if len(seeds) == 0 or len(items) == 0:
        return None
    lx, lo, xo = (m.loc[seeds, items].to_numpy(dtype=float) for m in mats)
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
        em_iv = stats.interval(em.dropna().to_numpy(dtype=float))  # (mean, lo, hi)
        loss_iv = stats.interval(loss.dropna().to_numpy(dtype=float))
        costs = {c: _mean(rep, c) for c in COSTS}
        row: dict[str, Any] = {
            "arm": arm,
            "best_config": arm_config(data.arms, arm),
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
            comps[arm] = _compare(data, arm, baseline, "em", sesoi, alpha)
            loss_comps[arm] = _compare(data, arm, baseline, "loss", LOSS_SESOI, alpha)
        st = trials[trials["arm"] == arm]["state"] if len(trials) else pd.Series(dtype=str)
        for state in ("complete", "pruned", "failed"):
            row[f"trials_{state}"] = int((st == state).sum())
        rows.append(row)
    comps = stats.holm_family(comps, primary)
    df = pd.DataFrame(rows).set_index("arm", drop=False)
    fields = ("diff", "lo", "hi", "lo90", "hi90", "p", "p_adj", "p_seed", "hedges_g", "mde", "tost_p")
    fields += ("seeds_needed", "df")
    for col in (*fields, "status", "verdict"):
        df[f"delta_{col}"] = [getattr(comps[a], col) if a in comps else None for a in df.index]
    for part in ("seed", "item", "resid"):
        df[f"delta_var_{part}"] = [
            getattr(comps[a].variance, part) if a in comps and comps[a].variance else None for a in df.index
        ]
    for col in ("diff", "lo", "hi", "p"):
        df[f"loss_delta_{col}"] = [getattr(loss_comps[a], col) if a in loss_comps else None for a in df.index]
    return df, comps, loss_comps, primary


def fixed_lora_comparisons(data: StudyData, arms: list[str], sesoi: float, alpha: float):
    """Each combination against its own LoRA settings trained alone on the same seeds (secondary,
    unadjusted): what X adds with LoRA held fixed, free of the baseline's different tuning."""
    have = set(data.items["arm"]) | set(data.failures["arm"])
    return {a: _compare(data, a, lora_alone(a), "em", sesoi, alpha) for a in arms if lora_alone(a) in have}


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
            out[f"{target} vs {arm}"] = _compare(data, target, arm, "em", sesoi, alpha)
    return out


@dataclass
class SearchCurve:
    """One arm's search in trial order: ``value`` (nan unless complete) and ``best`` so far."""

    objective: str
    budget: int | None
    trials: pd.DataFrame  # number, value, best


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
    return SearchCurve(objective[0], int(budget) if budget else None, frame)


def convergence_warnings(data: StudyData) -> list[str]:
    """Arms whose search was extended (a re-pinned best), and arms whose best search trial came in
    the last quarter of the budget."""
    out = []
    for arm, st in data.studies.items():
        for old in st.user_attrs.get("superseded") or []:
            now = st.user_attrs.get("best_trial")
            out.append(
                f"{arm}: the search was extended beyond {old.get('n_trials')} trials; its best was trial "
                f"#{old.get('best_trial')}, "
                + (f"now #{now}" if now is not None else "not yet re-pinned")
                + f". This report uses the current best; the earlier best's replicates stay recorded in "
                f"{old.get('replicate_study')}."
            )
    for arm in data.arms.index:
        c = search_curve(data, arm)
        if c is None or not c.budget or c.trials["value"].notna().sum() < 2:
            continue
        tr = c.trials
        first_best = int(tr.loc[tr["value"] == tr["best"].iloc[-1], "number"].iloc[0]) + 1
        if first_best > LATE_BEST * c.budget:
            out.append(
                f"{arm}: the best search trial was #{first_best} of {c.budget}, in the last "
                "quarter of the budget: search may not have converged; run it again as a new study "
                "(another study.name) with a larger study.n_trials."
            )
    return out


# --------------------------------------------------------------------------- words


def _plan_text(c: stats.Comparison) -> str:
    if c.more_items_needed:
        return "more seeds alone would not settle it: the test set is too small (raise data.n_test)"
    if c.seeds_needed is not None:
        return f"would need about {c.seeds_needed} seeds"
    return c.plan_note or ""


def _verdict_word(c: stats.Comparison, sesoi: float) -> str:
    margin = f"±{100 * sesoi:.1f} EM" if c.metric == "em" else f"±{sesoi:g}"
    if c.verdict == stats.EQUIVALENT:
        return f"EQUIVALENT within {margin}"
    if c.verdict in (stats.BETTER_SMALL, stats.WORSE_SMALL):
        word = "BETTER" if c.verdict == stats.BETTER_SMALL else "WORSE"
        return f"{word}, BUT WITHIN {margin} (a real difference too small to matter)"
    if c.verdict == stats.INCONCLUSIVE:
        if c.status == stats.NO_DATA:
            return "INCONCLUSIVE (no replicate seeds in both arms yet)"
        if c.status not in stats.DECIDABLE:
            return f"NO VERDICT — {c.note}"
        plan = _plan_text(c)
        return "INCONCLUSIVE" + (f" — {plan}" if plan else "")
    return c.verdict.upper()  # better / worse


def variance_text(c: stats.Comparison) -> str:
    """Where the uncertainty of the difference comes from: seeds, items, or their interaction."""
    if c.variance is None or c.n_seeds < 2 or c.n_items < 2:
        return ""
    shares = c.variance.shares(c.n_seeds, c.n_items)
    if any(math.isnan(x) for x in shares):
        return ""
    seed, item, resid = (round(100 * x) for x in shares)
    return f"variance of the difference: {seed}% seeds, {item}% items, {resid}% seed x item"


def _numbers_text(c: stats.Comparison, loss: stats.Comparison | None, adjusted: bool) -> str:
    if c.status == stats.NO_DATA:
        return "no seed has test scores in both arms yet"
    p, label = (c.p_adj, "Holm-adjusted p") if adjusted else (c.p, "unadjusted p")
    level = round(100 * (1 - c.alpha))
    parts = [
        f"{pts(c.diff)} EM ({level}% CI {pts(c.lo)}..{pts(c.hi)}, {label}={fmt_p(p)}",
        f"equivalence (TOST) at ±{100 * c.sesoi:.1f}: {round(100 * (1 - 2 * c.alpha))}% CI "
        f"{pts(c.lo90)}..{pts(c.hi90)}, p={fmt_p(c.tost_p)}",
    ]
    if not math.isnan(c.p_seed):
        parts.append(f"paired t over seed means p={fmt_p(c.p_seed)}")
    if not math.isnan(c.hedges_g):
        parts.append(f"Hedges' g={c.hedges_g:.2f}")
    if not math.isnan(c.mde):
        parts.append(f"detectable at 80% power: {100 * c.mde:.1f} EM")
    if var := variance_text(c):
        parts.append(var)
    text = "; ".join(parts) + f"; {c.n_seeds} seed(s) x {c.n_items} item(s))"
    if loss is not None and loss.status != stats.NO_DATA:
        text += f"; test loss {loss.diff:+.3f} ({level}% CI {loss.lo:+.3f}..{loss.hi:+.3f})"
    if c.note and c.status in stats.DECIDABLE:
        text += f"; {c.note}"
    if c.verdict == stats.INCONCLUSIVE and c.plan_note and c.status == stats.OK:
        text += f"; {c.plan_note}"
    return text


def _costs_text(row: pd.Series) -> str:
    parts = [
        f"{row[col]:.2f}x {what}"
        for col, what in (
            ("params_ratio", "trainable params"),
            ("step_time_ratio", "step time"),
            ("mem_ratio", "peak memory"),
        )
        if not math.isnan(row[col])
    ]
    return (", at " + ", ".join(parts)) if parts else ""


def _knockout_text(data: StudyData, arm: str) -> str:
    rep = data.replicates[data.replicates["arm"] == arm]
    full = _mean(rep, METRIC)
    drops = [
        f"{c.split('/')[1]} {pts(_mean(rep, c) - full)}"
        for c in rep.columns
        if c.startswith("knockout/") and c.endswith(f"/{METRIC}") and rep[c].notna().any()
    ]
    return f" EM change with one component switched off at evaluation: {', '.join(drops)}." if drops else ""


def _failure_text(data: StudyData, arm: str) -> str:
    f = data.failures
    f = f[f["arm"] == arm] if len(f) else f
    if not len(f):
        return ""
    seeds = ", ".join(f"seed {r.seed} ({r.reason})" for r in f.itertuples())
    return f" {len(f)} replicate seed(s) failed: {seeds}; each is scored as wrong on every item (loss: the worst recorded), not dropped."


def verdict(data: StudyData, s: Summary) -> list[str]:
    numbers, baseline = s.numbers, s.baseline
    base = numbers.loc[baseline]
    label = "LoRA-only" if baseline == "lora" else baseline
    if base["seeds"] == 0:
        head = f"Baseline {baseline}: no replicate seeds recorded yet."
    else:
        design = f"{int(base['seeds'])} seed(s)" + (
            f" x {int(base['items'])} test items" if base["items"] else ""
        )
        head = (
            f"Baseline {baseline}: test EM {pts(base['em_mean'], False)} "
            f"(95% CI {pts(base['em_lo'], False)}..{pts(base['em_hi'], False)}) over {design}."
        )
    lines = [head]
    for arm, c in s.comparisons.items():
        row = numbers.loc[arm]
        name = arm
        matched = matched_to(data.arms, arm)
        if matched:
            r = (data.arms.loc[arm, "best_config"].get("lora") or {}).get("r")
            ratio = (
                _ratio(row["trainable_params"], numbers.loc[matched, "trainable_params"])
                if matched in numbers.index
                else math.nan
            )
            extra = f", {ratio:.2f}x the trainable params of {matched}" if not math.isnan(ratio) else ""
            name = f"{arm} (LoRA r={r}, parameter-matched to {matched}{extra})"
        tag = "primary" if c.primary else "secondary, unadjusted"
        line = f"{name} vs {label} [{tag}]: {_verdict_word(c, s.sesoi)}: "
        line += _numbers_text(c, s.loss_comparisons.get(arm), c.primary)
        lines.append(
            line
            + (_costs_text(row) if c.status != stats.NO_DATA else "")
            + "."
            + _knockout_text(data, arm)
            + _failure_text(data, arm)
        )
    for key, c in s.secondary.items():
        lines.append(
            f"{key} (same parameter budget) [secondary, unadjusted]: {_verdict_word(c, s.sesoi)}: "
            + _numbers_text(c, None, False)
            + "."
        )
    for arm, c in s.fixed_lora.items():
        lines.append(
            f"{arm} vs its own LoRA settings trained alone (same seeds; what X adds with LoRA held fixed) "
            f"[secondary, unadjusted]: {_verdict_word(c, s.sesoi)}: " + _numbers_text(c, None, False) + "."
        )
    for arm, it in s.interactions.items():
        c = it.vs_single
        lines.append(
            f"{arm} vs {it.single} alone [secondary, unadjusted]: {_verdict_word(c, s.sesoi)}: "
            + _numbers_text(c, None, False)
            + "."
        )
        zero = {"per item": "", "mean": " (zero-shot term: its mean only)", "none": " (no zero-shot record)"}
        floor = (
            f" Zero-shot EM is {pts(it.zero_shot_em, False)}: at the floor the zero-shot term cannot fall, so "
            "this contrast says more about the floor than about how the methods combine; read the comparison "
            f"with {it.single} alone instead."
            if not math.isnan(it.zero_shot_em) and it.zero_shot_em < 0.05
            else ""
        )
        lines.append(
            f"Additive contrast on the EM scale {arm}: ({arm}) - lora - {it.single} + zero-shot = {pts(it.diff)} EM "
            f"({round(100 * (1 - s.alpha))}% CI {pts(it.lo)}..{pts(it.hi)}, p={fmt_p(it.p)}, {it.n_seeds} seed(s))"
            f"{zero[it.zero_shot]}." + floor
        )
    lines += [interference_text(arm, r, s.alpha) for arm, r in s.interference.items()]
    by = {k: [a for a in s.primary if s.comparisons[a].verdict == k] for k in VERDICT_ORDER}
    summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in by.items() if v)
    lines.append(
        f"Primary family (fixed by the design: each LoRA arm vs {label}, Holm at alpha={s.alpha:g}, "
        f"{len(s.primary)} comparison(s)): " + (summary or "empty") + "."
    )
    return lines


def interference_text(arm: str, r: similarity.Interference, alpha: float) -> str:
    level = round(100 * (1 - alpha))
    head = f"Interference in {arm} (LoRA held fixed): "
    if r.n_seeds < 2:
        return head + "not measured (no seed has LoRA's update alone and beside X, with a reseed pair)."
    text = (
        f"LoRA's update beside X vs alone, same seed: typical cosine {r.cos_with_x:.3f}; LoRA alone on "
        f"another seed: {r.cos_reseed:.3f}; difference on Fisher's z scale {r.diff:+.2f}"
    )
    if r.reading == similarity.FEW:
        return head + text + f" ({r.n_seeds} seeds: an interval needs {similarity.MIN_SEEDS})."
    text += f" ({level}% CI {r.lo:+.2f}..{r.hi:+.2f}, {r.n_seeds} seeds): X moves LoRA's update {r.reading}"
    return head + text + "."


def summarise(
    data: StudyData, baseline: str = "lora", alpha: float = 0.05, sesoi: float | None = None
) -> Summary:
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
        convergence_warnings(data),
        fixed_lora_comparisons(data, list(numbers.index), sesoi, alpha),
        interference_readings(data, alpha),
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
    s.verdict = verdict(data, s)
    return s


def display_table(s: Summary) -> pd.DataFrame:
    """The per-arm table as strings, shared by report.md and report.html."""

    def ci(mean: float, lo: float, hi: float, n: int) -> str:
        if n == 0:
            return "-"
        return f"{pts(mean, False)} [{pts(lo, False)}..{pts(hi, False)}]"

    def loss_ci(mean: float, lo: float, hi: float, n: int) -> str:
        return "-" if n == 0 else f"{mean:.3f} [{lo:.3f}..{hi:.3f}]"

    def delta(arm: str) -> str:
        c = s.comparisons.get(arm)
        if c is None:
            return "baseline"
        if c.status == stats.NO_DATA:
            return "-"
        p = c.p_adj if c.primary else c.p
        return f"{pts(c.diff)} [{pts(c.lo)}..{pts(c.hi)}], p={fmt_p(p)}" + ("" if c.primary else " (unadj.)")

    def word(arm: str) -> str:
        c = s.comparisons.get(arm)
        if c is None or c.status == stats.NO_DATA:
            return "-"
        if c.verdict == stats.EQUIVALENT:
            return f"equivalent (±{100 * s.sesoi:.1f})"
        if c.verdict in (stats.BETTER_SMALL, stats.WORSE_SMALL):
            return f"{c.verdict.split()[0]}, within ±{100 * s.sesoi:.1f}"
        if c.verdict == stats.INCONCLUSIVE:
            if c.status not in stats.DECIDABLE:
                return f"no verdict ({c.status.replace('_', ' ')})"
            more = (
                "more items" if c.more_items_needed else f"~{c.seeds_needed} seeds" if c.seeds_needed else ""
            )
            return "inconclusive" + (f" ({more})" if more else "")
        return c.verdict

    def num(x: float, f: str) -> str:
        return "-" if x is None or math.isnan(x) else format(x, f)

    rows = []
    for arm, r in s.numbers.iterrows():
        rows.append(
            {
                "arm": arm,
                "best configuration": r["best_config"] or "-",
                "seeds": int(r["seeds"])
                if not r.get("seeds_failed")
                else f"{int(r['seeds'])} ({int(r['seeds_failed'])} failed)",
                "test EM [95% CI]": ci(r["em_mean"], r["em_lo"], r["em_hi"], r["seeds"]),
                "test loss [95% CI]": loss_ci(r["loss_mean"], r["loss_lo"], r["loss_hi"], r["seeds"]),
                "trainable params": num(r["trainable_params"], ",.0f"),
                "% trainable": num(r["trainable_pct"], ".3f"),
                "tokens/s": num(r["tokens_per_s"], ",.0f"),
                "peak mem (MB)": num(r["peak_mem_mb"], ",.0f"),
                "Δ EM vs baseline [95% CI], p": delta(arm),
                "verdict": word(arm),
                "trials c/p/f": f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}",
            }
        )
    return pd.DataFrame(rows)
