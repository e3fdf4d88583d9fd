"""Per-arm numbers and the verdict, computed from the collected frames (no I/O here).

Task metric: exact match on the test split, recorded as a fraction and shown
in points (x100), so "+2.1 EM" means 2.1 percentage points of exact matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from ablate.report import stats
from ablate.report.collect import StudyData

METRIC, LOSS = "test_em", "test_loss"
COSTS = ("trainable_params", "trainable_pct", "tokens_per_s", "step_time_s", "peak_mem_mb", "wall_s")


@dataclass
class Summary:
    numbers: pd.DataFrame  # one row per arm, raw units: what summary.csv holds and tests compare
    comparisons: dict[str, stats.Comparison]  # arm -> arm - baseline on test EM (Holm-adjusted p)
    verdict: list[str]  # sentences / bullet lines, computed from ``numbers``
    baseline: str
    alpha: float


def pts(x: float, sign: bool = True) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


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


def _mean(rep: pd.DataFrame, col: str) -> float:
    return float(rep[col].mean()) if col in rep and rep[col].notna().any() else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def matched_to(arms: pd.DataFrame, arm: str) -> str | None:
    """The arm a parameter-matched LoRA arm was sized against (pandas may hold a missing one as nan)."""
    value = arms.loc[arm, "matched_to"]
    return value if isinstance(value, str) and value else None


def order_arms(arms: pd.DataFrame, baseline: str) -> list[str]:
    """Baseline first, combinations in storage order, the parameter-matched LoRA last."""
    names = list(arms.index)
    matched = [a for a in names if matched_to(arms, a)]
    return [baseline] + [a for a in names if a != baseline and a not in matched] + matched


def numbers_frame(data: StudyData, baseline: str) -> tuple[pd.DataFrame, dict[str, stats.Comparison]]:
    reps, trials = data.replicates, data.trials
    base_rep = reps[reps["arm"] == baseline]
    base_costs = {c: _mean(base_rep, c) for c in COSTS}
    rows, comps = [], {}
    for arm in order_arms(data.arms, baseline):
        rep = reps[reps["arm"] == arm]
        em, loss = stats.t_interval(rep.get(METRIC, [])), stats.t_interval(rep.get(LOSS, []))
        costs = {c: _mean(rep, c) for c in COSTS}
        row: dict[str, Any] = {
            "arm": arm,
            "best_config": fmt_config(data.arms.loc[arm, "best_config"]),
            "seeds": em.n,
            **{f"em_{k}": getattr(em, k) for k in ("mean", "lo", "hi")},
            **{f"loss_{k}": getattr(loss, k) for k in ("mean", "lo", "hi")},
            **costs,
            "params_ratio": _ratio(costs["trainable_params"], base_costs["trainable_params"]),
            "step_time_ratio": _ratio(costs["step_time_s"], base_costs["step_time_s"]),
            "mem_ratio": _ratio(costs["peak_mem_mb"], base_costs["peak_mem_mb"]),
        }
        if arm != baseline:
            comps[arm] = stats.welch(rep.get(METRIC, []), base_rep.get(METRIC, []))
        st = trials[trials["arm"] == arm]["state"] if len(trials) else pd.Series(dtype=str)
        for state in ("complete", "pruned", "failed"):
            row[f"trials_{state}"] = int((st == state).sum())
        rows.append(row)
    tested = [a for a, c in comps.items() if c.tested]
    for arm, p_adj in zip(tested, stats.holm([comps[a].p for a in tested]), strict=True):
        comps[arm] = replace(comps[arm], p_adj=p_adj)
    df = pd.DataFrame(rows).set_index("arm", drop=False)
    for col in ("diff", "lo", "hi", "p", "p_adj", "df", "status"):
        df[f"delta_{col}"] = [getattr(comps[a], col) if a in comps else None for a in df.index]
    return df, comps


def _comparison_text(c: stats.Comparison, alpha: float, base_label: str, adjusted: bool = True) -> str:
    """One clause for ``arm - baseline``; never prints nan, says why a number is missing."""
    if c.status == stats.NO_DATA:
        return "no replicate seeds recorded yet, so no comparison"
    if c.status == stats.FEW_SEEDS:
        return (
            f"{pts(c.diff)} EM vs {base_label} from {c.n_arm} vs {c.n_base} seed(s); "
            "fewer than 2 seeds in an arm, so no CI and no p-value"
        )
    if c.status == stats.IDENTICAL:
        return (
            f"identical to {base_label} on every seed ({c.n_arm} vs {c.n_base} seeds): "
            "a difference of 0 with no spread, so no CI and no p-value"
        )
    if c.status == stats.NO_SPREAD:
        return (
            f"{pts(c.diff)} EM vs {base_label}, but every seed of both arms scored the same within "
            "its arm (no spread), so a t-test is undefined: no CI and no p-value"
        )
    p, label = (c.p_adj, "Holm-adjusted p") if adjusted else (c.p, "unadjusted p")
    ci = f"95% CI {pts(c.lo)}..{pts(c.hi)}, {label}={fmt_p(p)}"
    if p < alpha:
        return f"{pts(c.diff)} EM vs {base_label} ({ci})"
    return f"{pts(c.diff)} EM vs {base_label}, not a significant difference at alpha={alpha:g} ({ci})"


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


def verdict(
    data: StudyData, numbers: pd.DataFrame, comps: dict[str, stats.Comparison], baseline: str, alpha: float
) -> list[str]:
    base = numbers.loc[baseline]
    label = "LoRA-only" if baseline == "lora" else baseline
    if base["seeds"] == 0:
        head = f"Baseline {baseline}: no replicate seeds recorded yet."
    elif base["seeds"] < 2:
        head = (
            f"Baseline {baseline}: test EM {pts(base['em_mean'], False)} from 1 seed (no CI with one seed)."
        )
    else:
        head = (
            f"Baseline {baseline}: test EM {pts(base['em_mean'], False)} "
            f"(95% CI {pts(base['em_lo'], False)}..{pts(base['em_hi'], False)}) over {base['seeds']} seeds."
        )
    lines = [head]
    for arm, c in comps.items():
        row = numbers.loc[arm]
        name = arm
        matched = matched_to(data.arms, arm)
        if matched:
            r = (data.arms.loc[arm, "best_config"].get("lora") or {}).get("r")
            known = matched in numbers.index  # the study writes a placeholder until matching has run
            ratio = (
                _ratio(row["trainable_params"], numbers.loc[matched, "trainable_params"])
                if known
                else math.nan
            )
            extra = f", {ratio:.2f}x the trainable params of {matched}" if not math.isnan(ratio) else ""
            name = f"{arm} (LoRA r={r}, parameter-matched to {matched}{extra})"
        line = f"{name}: {_comparison_text(c, alpha, label)}"
        lines.append(
            line + (_costs_text(row) if c.status != stats.NO_DATA else "") + "." + _knockout_text(data, arm)
        )
        if matched and matched in numbers.index:
            rep = data.replicates
            vs = stats.welch(
                rep[rep["arm"] == matched].get(METRIC, []), rep[rep["arm"] == arm].get(METRIC, [])
            )
            lines.append(
                f"{matched} vs {arm} (same parameter budget): {_comparison_text(vs, alpha, arm, False)}."
            )
    wins = [a for a, c in comps.items() if c.tested and c.p_adj < alpha and c.diff > 0]
    losses = [a for a, c in comps.items() if c.tested and c.p_adj < alpha and c.diff < 0]
    if wins:
        lines.append(f"Significantly better than {label} at alpha={alpha:g} after Holm: {', '.join(wins)}.")
    else:
        lines.append(f"No arm is significantly better than {label} at alpha={alpha:g} after Holm adjustment.")
    if losses:
        lines.append(f"Significantly worse than {label}: {', '.join(losses)}.")
    return lines


def summarise(data: StudyData, baseline: str = "lora", alpha: float = 0.05) -> Summary:
    numbers, comps = numbers_frame(data, baseline)
    return Summary(numbers, comps, verdict(data, numbers, comps, baseline, alpha), baseline, alpha)


def display_table(s: Summary) -> pd.DataFrame:
    """The per-arm table as strings, shared by report.md and report.html."""

    def ci(mean: float, lo: float, hi: float, n: int) -> str:
        if n == 0:
            return "-"
        if math.isnan(lo):
            return f"{pts(mean, False)} (1 seed, no CI)"
        return f"{pts(mean, False)} ± {100 * (hi - lo) / 2:.1f}"

    def loss_ci(mean: float, lo: float, hi: float, n: int) -> str:
        if n == 0:
            return "-"
        return f"{mean:.3f}" + (" (1 seed)" if math.isnan(lo) else f" ± {(hi - lo) / 2:.3f}")

    def delta(arm: str) -> str:
        c = s.comparisons.get(arm)
        if c is None:
            return "baseline"
        if c.status == stats.OK:
            return f"{pts(c.diff)} [{pts(c.lo)}..{pts(c.hi)}], p={fmt_p(c.p_adj)}"
        return {
            stats.NO_DATA: "-",
            stats.FEW_SEEDS: f"{pts(c.diff)} (<2 seeds: no CI, no p)",
            stats.IDENTICAL: "0.0 (identical on every seed)",
            stats.NO_SPREAD: f"{pts(c.diff)} (no spread: no test)",
        }[c.status]

    def num(x: float, f: str) -> str:
        return "-" if x is None or math.isnan(x) else format(x, f)

    rows = []
    for arm, r in s.numbers.iterrows():
        rows.append(
            {
                "arm": arm,
                "best configuration": r["best_config"] or "-",
                "seeds": int(r["seeds"]),
                "test EM (mean ± 95% CI)": ci(r["em_mean"], r["em_lo"], r["em_hi"], r["seeds"]),
                "test loss (mean ± 95% CI)": loss_ci(r["loss_mean"], r["loss_lo"], r["loss_hi"], r["seeds"]),
                "trainable params": num(r["trainable_params"], ",.0f"),
                "% trainable": num(r["trainable_pct"], ".3f"),
                "tokens/s": num(r["tokens_per_s"], ",.0f"),
                "peak mem (MB)": num(r["peak_mem_mb"], ",.0f"),
                "wall (s)": num(r["wall_s"], ",.1f"),
                "Δ EM vs baseline [95% CI], Holm p": delta(arm),
                "trials c/p/f": f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}",
            }
        )
    return pd.DataFrame(rows)
