"""Comparison report of a study: every arm against the LoRA-only baseline.

``build_report`` reads only what the study recorded (the Optuna storage and,
when given, MLflow) and writes ``report.md``, a self-contained ``report.html``,
``trials.csv``, ``replicates.csv``, ``items.csv`` (per test item and seed), ``summary.csv``,
``verdict.json`` (the verdict's lines) and the figures into ``out_dir``. ``ablate.report.publish``
attaches those files to the study's MLflow run and puts the verdict where the MLflow UI shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ablate.components import BASE
from ablate.errors import ConfigError

REPORT_ARTIFACT_PATH = "report"


def build_report(
    study: str,
    storage: str,
    tracking_uri: str | None,
    out_dir: Path,
    baseline: str = BASE,
    alpha: float = 0.05,
) -> Path:
    """Rebuild the report of ``study`` from ``storage`` (+ MLflow at ``tracking_uri``) into ``out_dir``."""
    # Heavy imports (pandas, scipy, matplotlib) only when a report is actually built.
    from ablate.report.collect import collect

    if not 0 < alpha < 1:
        raise ConfigError("alpha", alpha, "must be between 0 and 1")
    data = collect(study, storage, tracking_uri)
    if baseline not in data.arms.index:
        raise ConfigError(
            "baseline", baseline, f"no such arm in study {study!r} (arms: {list(data.arms.index)})"
        )
    return write_report(study, data, out_dir, baseline, alpha)


def write_report(
    study: str, data, out_dir: Path, baseline: str = BASE, alpha: float = 0.05, sesoi: float | None = None
) -> Path:
    """The report files of ``data`` (a recorded study's, or results made elsewhere: ``ablate.report.external``)."""
    from ablate.report import figures, paper, render
    from ablate.report.summary import display_table, summarise

    summary = summarise(data, baseline, alpha, sesoi)
    table = display_table(summary)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs, imp = figures.all_figures(data, summary, out_dir / "figures")
    data.trials.to_csv(out_dir / "trials.csv", index=False)
    data.replicates.to_csv(out_dir / "replicates.csv", index=False)
    data.items.to_csv(out_dir / "items.csv", index=False)
    summary.numbers.to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "table.tex").write_text(paper.latex(summary, study), encoding="utf-8")  # booktabs, for a paper
    (out_dir / "table.md").write_text(paper.markdown(summary), encoding="utf-8")  # compact, for a README
    verdict = {"study": study, "baseline": summary.baseline, "alpha": alpha, "sesoi": summary.sesoi}
    verdict |= {"primary": summary.primary, "lines": summary.verdict}  # what `describe_study` shows in MLflow
    (out_dir / "verdict.json").write_text(json.dumps(verdict, indent=2), encoding="utf-8")
    (out_dir / "report.md").write_text(
        render.markdown(study, summary, table, figs, imp, out_dir, data.interference), encoding="utf-8"
    )
    (out_dir / "report.html").write_text(
        render.html_page(study, summary, table, figs, imp, data.interference), encoding="utf-8"
    )
    return out_dir


def find_study_run(tracking_uri: str, study: str) -> str | None:
    """Run id of the newest study-level MLflow run of ``study`` (for ``publish.log_report``), None if absent."""
    from ablate.report.collect import find_study_run as _find

    return _find(tracking_uri, study)


__all__ = ["REPORT_ARTIFACT_PATH", "build_report", "find_study_run", "write_report"]
