"""report.md and report.html from the same blocks, so the two never disagree.

The HTML embeds every figure as base64 so one file can be mailed, attached to
an MLflow run or opened offline; the Markdown links the PNGs beside it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from ablate.report.figures import Fig
from ablate.report.summary import Summary

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
        "EM is exact match on the test split in points (percent). Deltas are Welch's t-tests across replicate "
        f"seeds with Welch-Satterthwaite 95% CIs; p-values are Holm-adjusted across arms (alpha={s.alpha:g})."
    )


def markdown(study: str, s: Summary, table: pd.DataFrame, figs: list[Fig], imp: dict, out: Path) -> str:
    lines = [f"# Ablation report: {study}", "", _header(s, study), "", "## Verdict", ""]
    lines += [f"- {v}" for v in s.verdict]
    lines += ["", "## Arms", "", _md_table(table), ""]
    if imp:
        lines += ["## Hyperparameter importance", "", _md_table(_importance_table(imp)), ""]
    lines += ["## Figures", ""]
    for f in figs:
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


def html_page(study: str, s: Summary, table: pd.DataFrame, figs: list[Fig], imp: dict) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ablate report: {e(study)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Ablation report: {e(study)}</h1>",
        f"<p>{e(_header(s, study)).replace('`', '')}</p>",
        "<h2>Verdict</h2><ul id='verdict'>" + "".join(f"<li>{e(v)}</li>" for v in s.verdict) + "</ul>",
        "<h2>Arms</h2>" + table.to_html(index=False, escape=True, table_id="arms", border=0),
    ]
    if imp:
        parts.append(
            "<h2>Hyperparameter importance</h2>" + _importance_table(imp).to_html(index=False, border=0)
        )
    parts.append("<h2>Figures</h2>")
    for f in figs:
        parts.append(f"<h3>{e(f.title)}</h3>")
        if f.path is not None:
            parts.append(_img(f.path, f.title))
        if f.note:
            parts.append(f"<p class='note'>{e(f.note)}</p>")
    parts.append("<p>Every search trial is listed in trials.csv, every replicate seed in replicates.csv.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
