"""The report's words: the verdict's sentences, the search warnings and the per-arm table as
text, from the numbers of ``ablate.report.numbers`` (computed there, only phrased here).

EM is shown in points (x100): "+2.1 EM" means 2.1 percentage points of exact matches.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ablate import stats
from ablate.components import BASE
from ablate.report.collect import StudyData
from ablate.report.numbers import (
    LATE_BEST,
    METRIC,
    VERDICT_ORDER,
    Summary,
    _mean,
    _ratio,
    compute,
    knockout_reference,
    matched_to,
    search_curve,
)
from ablate.stats import similarity


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
    level, ci = f"{round(100 * (1 - c.alpha))}%", "CI"
    if c.sequential:  # the design spent alpha / m over the looks: its own level, no Holm
        p, label = c.p, "p"
        level, ci = f"{100 * c.ci_level:.4g}%", "repeated CI"
    parts = [
        f"{pts(c.diff)} EM ({level} {ci} {pts(c.lo)}..{pts(c.hi)}, {label}={fmt_p(p)}",
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
        loss_level = round(100 * (1 - loss.alpha))
        text += f"; test loss {loss.diff:+.3f} ({loss_level}% CI {loss.lo:+.3f}..{loss.hi:+.3f})"
    if c.note and c.status in stats.DECIDABLE:
        text += f"; {c.note}"
    if c.verdict == stats.INCONCLUSIVE and c.plan_note and c.status == stats.OK and not c.sequential:
        text += f"; {c.plan_note}"  # (a sequential design's account is in the verdict's word)
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
    full, items = knockout_reference(rep)
    drops = [
        f"{c.split('/')[1]} {pts(_mean(rep, c) - full)}"
        for c in rep.columns
        if c.startswith("knockout/") and c.endswith(f"/{METRIC}") and rep[c].notna().any()
    ]
    where = f" (on {items} of the test items)" if items else ""
    return (
        f" EM change with one component switched off at evaluation{where}: {', '.join(drops)}."
        if drops
        else ""
    )


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
    elsewhere = "primary" in data.arms  # results made elsewhere (ablate compare): the family was given
    label = "LoRA-only" if baseline == "lora" and not elsewhere else baseline
    family = "the arms given as primary" if elsewhere else "each LoRA arm"
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
    how = f"Holm at alpha={s.alpha:g}"
    if s.sequential:
        d = s.sequential["design"]
        how = (
            f"group-sequential, each at alpha/m={d['alpha']:g}/{d['m']} spent over looks at "
            f"{', '.join(map(str, d['looks']))} seeds ({SPENDING_NAMES[d['spending']]})"
        )
    lines.append(
        f"Primary family (fixed by the design: {family} vs {label}, {how}, "
        f"{len(s.primary)} comparison(s)): " + (summary or "empty") + "."
    )
    if s.sequential:
        lines.append(sequential_text(s))
    return lines


SPENDING_NAMES = {"obf": "Lan-DeMets O'Brien-Fleming spending", "pocock": "Lan-DeMets Pocock spending"}


def sequential_text(s: Summary) -> str:
    """Seeds spent per arm under ``study.seeds=auto``, and why each primary comparison stopped."""
    looks = s.sequential.get("looks") or []
    seeds = {a: int(s.numbers.loc[a, "seeds"]) for a in s.numbers.index}
    spent = ", ".join(f"{a} {n}" for a, n in seeds.items())
    taken = ", ".join(str(look["seeds"]) for look in looks) or "none yet"
    stops = "; ".join(f"{a}: {s.comparisons[a].sequential}" for a in s.primary if s.comparisons[a].sequential)
    return (
        f"Seeds (study.seeds=auto): looks taken at {taken} seeds; seeds per arm: {spent} (X-alone and "
        f"matched arms keep the first look's; benchmarks/results/sequential.md measures the design's error "
        f"rate and power). " + (stops + "." if stops else "")
    )


def design_table(s: Summary) -> pd.DataFrame | None:
    """One row per planned look: its seeds, boundary, nominal p and alpha spent, and where each
    primary comparison stood after it (blank: not taken, or the comparison had stopped)."""
    if not s.sequential:
        return None
    d, looks = s.sequential["design"], s.sequential.get("looks") or []
    rows = []
    for k, n in enumerate(d["looks"]):
        row = {
            "look": k + 1,
            "seeds": n,
            "z boundary": f"{d['z'][k]:.3f}",
            "nominal p": f"{d['nominal_p'][k]:.2g}",
            "alpha spent": f"{d['alpha_spent'][k]:.2g}",
        }
        steps = looks[k]["steps"] if k < len(looks) else {}
        for arm in s.primary:
            step = steps.get(arm)
            row[arm] = (
                ""
                if step is None
                else f"{step['reason']}" + (f" (p={step['p']:.2g})" if step.get("p") is not None else "")
            )
        rows.append(row)
    return pd.DataFrame(rows)


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
    data: StudyData, baseline: str = BASE, alpha: float = 0.05, sesoi: float | None = None
) -> Summary:
    """The numbers (``ablate.report.numbers.compute``) and their words: the verdict lines, the
    search warnings and each arm's best configuration as text."""
    s = compute(data, baseline, alpha, sesoi)
    s.numbers.insert(1, "best_config", [arm_config(data.arms, a) for a in s.numbers.index])
    s.warnings = convergence_warnings(data)
    s.verdict = verdict(data, s)
    s.metric = data.metric
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
        p = c.p_adj if c.primary and not c.sequential else c.p
        tag = " (sequential)" if c.sequential else "" if c.primary else " (unadj.)"
        return f"{pts(c.diff)} [{pts(c.lo)}..{pts(c.hi)}], p={fmt_p(p)}" + tag

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
            if c.sequential:
                more = "at the cap" if "at the cap" in c.sequential else "open"
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
