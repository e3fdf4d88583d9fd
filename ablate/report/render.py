"""report.md and report.html from the same blocks, so the two never disagree.

The HTML embeds every figure as base64 so one file can be mailed, attached to
an MLflow run or opened offline; the Markdown links the PNGs beside it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from ablate import stats
from ablate.report.figures import Fig
from ablate.report.summary import Summary, design_table, pts
from ablate.stats.similarity import FEW

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} img{max-width:100%;border:1px solid #eee} .note{color:#666;font-style:italic}
li{margin:.3rem 0}
"""


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)  # keep "1.000" as written


def _importance_table(imp: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [
        {"arm": a, "parameter": p, "importance": f"{v:.3f}"}
        for a, vals in imp.items()
        for p, v in vals.items()
    ]
    return pd.DataFrame(rows)


def _header(s: Summary, study: str) -> str:
    return (
        f"Study `{study}`: {len(s.numbers)} arm(s) compared with the baseline `{s.baseline}`. "
        f"EM is {s.metric}, in points (percent). Every comparison is paired by seed and "
        "test item; its 95% CI and p-value are a t interval on the crossed seeds x items variance "
        "(two-way ANOVA moments, Satterthwaite degrees of freedom), which covers another training run as "
        "well as another draw of test items; benchmarks/results/calibration.md measures how often it is "
        f"wrong. The primary family (each LoRA arm vs `{s.baseline}`) is fixed by the design "
        f"and Holm-adjusted at alpha={s.alpha:g}; other comparisons are secondary and unadjusted. "
        f'"Equivalent" needs a TOST within ±{100 * s.sesoi:.1f} EM (study.sesoi; its 90% CI inside the '
        'margin); a significant difference inside that margin is "better/worse, but within ±sesoi"; '
        "otherwise the result is inconclusive, with the seeds that would likely settle it. No verdict is "
        f"drawn from fewer than {stats.MIN_SEEDS} seeds, from records without per-item scores, or from arms "
        "that agree on every item (both at the floor or the ceiling). A replicate seed that failed counts "
        "against its arm (every item wrong)."
    ) + (SEARCHES_NOTE.format(k=s.searches) if s.searches > 1 else "")


SEARCHES_NOTE = (
    " Search: {k} independent searches per arm (study.search_repeats), each with its own sampler stream "
    "and seeds; each search's best was replicated on seeds of its own, and every comparison has one row "
    "per search (the mean of its seeds), so its interval also covers the choice of configuration and "
    "its degrees of freedom come from the searches. The arms table's configuration is the first search's."
)


DESIGN_NOTE = (
    "study.seeds=auto: every arm ran the first look's seeds; at each look each primary comparison still "
    "open was tested at that look's boundary (its nominal p), and only the open arms and the baseline got "
    "the next look's seeds. The boundaries spend the family's alpha over the looks (Lan-DeMets), so the "
    "rate of false better/worse verdicts over the whole design stays at alpha; its intervals are repeated "
    "confidence intervals at the level of the look each comparison stopped at."
)
INTERFERENCE_NOTE = (
    "LoRA's weight update dW = s·B·A of each combination, compared with the same LoRA settings "
    "(rank, alpha, targets, learning rate) trained alone on the same seed; the reference is LoRA alone "
    "against itself on another seed: how far a new initialisation and data order move it. A cosine near 1 "
    "means X leaves LoRA's solution in place; a norm ratio below 1 means X takes over part of the work. "
    "The difference of the two cosines is taken on Fisher's z scale, with a delete-one-seed jackknife "
    "interval (benchmarks/results/calibration.md measures its coverage). 'X adds at fixed LoRA' is the "
    "test-EM difference of the combination and that LoRA alone, paired by seed and item."
)
INTERFERENCE_LEGACY = (
    "Recorded before LoRA was held fixed: the baseline's LoRA was tuned alone and the combination's beside "
    "X, so their rank, alpha and targets may differ; a difference here mixes those hyperparameters with "
    "interference proper, and there is no seed-to-seed reference. Re-run the study to measure it fixed."
)


def _interference_table(s: Summary, inter: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm, g in inter.groupby("arm", sort=False):
        with_x = g[g["kind"] != "reseed"]
        row = {
            "arm": arm,
            "seeds": len(with_x),
            "cos(ΔW alone, ΔW with X) per seed": ", ".join(f"{v:.3f}" for v in with_x["cos"]),
            "mean norm ratio (with X / alone)": f"{with_x['norm_ratio'].mean():.2f}",
        }
        r = s.interference.get(arm)
        if r is not None:
            fixed = s.fixed_lora.get(arm)
            row |= {
                "cos across reseeds (LoRA alone)": f"{r.cos_reseed:.3f}" if r.n_seeds >= 2 else "-",
                "Δz [95% CI]": "-" if r.n_seeds < 2 else f"{r.diff:+.2f}"
                + ("" if r.reading == FEW else f" [{r.lo:+.2f}..{r.hi:+.2f}]"),
                "X moves LoRA": r.reading,
                "X adds at fixed LoRA (EM)": "-" if fixed is None or fixed.status == stats.NO_DATA
                else f"{pts(fixed.diff)} [{pts(fixed.lo)}..{pts(fixed.hi)}]",
            }  # fmt: skip
        else:
            row["LoRA"] = "tuned alone (see caveat)"
        rows.append(row)
    return pd.DataFrame(rows)


def _interference_notes(inter: pd.DataFrame) -> list[str]:
    return [INTERFERENCE_NOTE] + ([INTERFERENCE_LEGACY] if (inter["kind"] == "tuned alone").any() else [])


def markdown(
    study: str, s: Summary, table: pd.DataFrame, figs: list[Fig], imp: dict, out: Path, inter: pd.DataFrame
) -> str:
    lines = [f"# Ablation report: {study}", "", _header(s, study), ""]
    for f in (f for f in figs if f.top):
        lines += [f"## {f.title}", ""]
        lines += [f"![{f.title}]({f.path.relative_to(out).as_posix()})", ""] if f.path is not None else []
        lines += [f"_{f.note}_", ""] if f.note else []
    lines += ["## Verdict", ""]
    lines += [f"- {v}" for v in s.verdict]
    if s.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in s.warnings]
    lines += ["", "## Arms", "", _md_table(table), ""]
    if (design := design_table(s)) is not None:
        lines += ["## Seeds: the group-sequential design", "", DESIGN_NOTE, "", _md_table(design), ""]
    if len(inter):
        lines += [
            "## Do the methods interfere?",
            "",
            *(x for note in _interference_notes(inter) for x in (note, "")),
            _md_table(_interference_table(s, inter)),
            "",
        ]
    if imp:
        lines += ["## Hyperparameter importance", "", _md_table(_importance_table(imp)), ""]
    lines += ["## Figures", ""]
    for f in (f for f in figs if not f.top):
        lines += [f"### {f.title}", ""]
        if f.path is not None:
            lines += [f"![{f.title}]({f.path.relative_to(out).as_posix()})", ""]
        if f.note:
            lines += [f"_{f.note}_", ""]
    lines += ["Every search trial is listed in `trials.csv`, every replicate seed in `replicates.csv`.", ""]
    return "\n".join(lines)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_page(
    study: str, s: Summary, table: pd.DataFrame, figs: list[Fig], imp: dict, inter: pd.DataFrame
) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ablate report: {e(study)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Ablation report: {e(study)}</h1>",
        f"<p>{e(_header(s, study)).replace('`', '')}</p>",
        *(
            f"<h2>{e(f.title)}</h2>"
            + (_img(f.path, f.title) if f.path is not None else "")
            + (f"<p class='note'>{e(f.note)}</p>" if f.note else "")
            for f in figs
            if f.top
        ),
        "<h2>Verdict</h2><ul id='verdict'>" + "".join(f"<li>{e(v)}</li>" for v in s.verdict) + "</ul>",
    ]
    if s.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in s.warnings) + "</ul>")
    parts.append("<h2>Arms</h2>" + table.to_html(index=False, escape=True, table_id="arms", border=0))
    if (design := design_table(s)) is not None:
        parts.append(
            "<h2>Seeds: the group-sequential design</h2>"
            + f"<p>{e(DESIGN_NOTE)}</p>"
            + design.to_html(index=False, border=0, table_id="design")
        )
    if len(inter):
        parts.append(
            "<h2>Do the methods interfere?</h2>"
            + "".join(f"<p>{e(note)}</p>" for note in _interference_notes(inter))
            + _interference_table(s, inter).to_html(index=False, border=0)
        )
    if imp:
        parts.append(
            "<h2>Hyperparameter importance</h2>" + _importance_table(imp).to_html(index=False, border=0)
        )
    parts.append("<h2>Figures</h2>")
    for f in (f for f in figs if not f.top):
        parts.append(f"<h3>{e(f.title)}</h3>")
        if f.path is not None:
            parts.append(_img(f.path, f.title))
        if f.note:
            parts.append(f"<p class='note'>{e(f.note)}</p>")
    parts.append("<p>Every search trial is listed in trials.csv, every replicate seed in replicates.csv.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
