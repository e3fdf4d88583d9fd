"""Publishing a built report: into MLflow (the study run's artifacts, the experiment's
description, each arm run's comparison metrics), and once across workers that finish together.

Kept apart from ``tracking`` (which records runs while they happen) and from ``build_report``
(which only reads what was recorded and writes files).
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ablate.report import REPORT_ARTIFACT_PATH, build_report
from ablate.storage import retry_lost
from ablate.tracking import NOTE_TAG, MlflowRecorder


def log_report(tracking_uri: str, study_run_id: str, out_dir: Path) -> None:
    """Log every file of ``out_dir`` as artifacts of the study run, under ``report/``."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(study_run_id, str(out_dir), REPORT_ARTIFACT_PATH)


def publish(
    spec: Any,
    tracking_uri: str | None,
    study_run_id: str | None,
    *,
    storage: Any = None,
    lock: Any = None,
    guarded: Callable[[Callable[[], Any]], Any] = lambda call: call(),
    echo: Callable[[str], None] = print,
) -> Path:
    """reports/NAME/ of study ``spec`` (a ``StudyConfig``) from the storage (and MLflow), then into
    MLflow (``guarded``: MLflow down leaves the report on disk standing). Workers that finish
    together do not write it at once over each other: under the storage ``lock``, a worker whose
    report directory already holds a report of the same stored state (``report_state``) leaves
    it as it is."""
    out = Path("reports") / spec.name

    def write() -> None:
        build_report(spec.name, spec.storage_url, tracking_uri, out, baseline=spec.baseline)
        if tracking_uri and study_run_id:

            def to_mlflow() -> None:
                log_report(tracking_uri, study_run_id, out)
                describe_study(tracking_uri, spec.name, spec.description, out)  # the MLflow UI's view

            guarded(to_mlflow)

    if storage is None or lock is None or not hasattr(storage, "get_all_studies"):
        write()
        return out
    with lock(f"report:{spec.name}"):
        where = f"{socket.gethostname()}:{out.resolve()}"
        state = report_state(storage, spec.name)
        holder = storage.get_study_id_from_name(f"{spec.name}/{spec.baseline}")
        written = dict(storage.get_study_user_attrs(holder).get("reports") or {})
        if written.get(where) == state and (out / "summary.csv").exists():
            echo(f"report {out} is up to date (written by another worker)")
            return out
        retry_lost(write, "report")  # the report reads the storage on connections of its own
        written[where] = state
        storage.set_study_user_attr(holder, "reports", written)
    return out


def report_state(storage: Any, name: str) -> str:
    """A digest of everything study ``name`` has stored (trials, their states and values, user
    attrs; not the ``reports`` attr that records this digest)."""
    import hashlib
    import json

    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        if not frozen.study_name.startswith(f"{name}/"):
            continue
        attrs = {k: v for k, v in frozen.user_attrs.items() if k != "reports"}
        trials = [
            (t.number, t.state.name, t.values, t.datetime_complete, sorted(t.user_attrs))
            for t in storage.get_all_trials(frozen._study_id, deepcopy=False)
        ]
        rows.append((frozen.study_name, attrs, trials))
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _pts(x: float, sign: bool = True) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def arm_line(row: Mapping[str, str], baseline: str) -> str:
    """One line per arm from a report's ``summary.csv`` row: configuration and result."""
    arm = row["arm"]
    parts = [f"{arm}: best configuration {row.get('best_config') or '(defaults)'}"]
    seeds = _num(row.get("seeds"))
    seeds = 0 if math.isnan(seeds) else int(seeds)
    if seeds:
        parts.append(
            f"test EM {_pts(_num(row['em_mean']), False)} "
            f"[95% CI {_pts(_num(row['em_lo']), False)}..{_pts(_num(row['em_hi']), False)}] over {seeds} seed(s)"
        )
    if arm == baseline:
        parts.append("the baseline")
    elif not math.isnan(_num(row.get("delta_diff"))):
        parts.append(
            f"Δ vs {baseline} {_pts(_num(row['delta_diff']))} EM "
            f"[{_pts(_num(row['delta_lo']))}..{_pts(_num(row['delta_hi']))}]: {row.get('delta_verdict') or 'n/a'}"
        )
    params = _num(row.get("trainable_params"))
    if not math.isnan(params):
        parts.append(f"{params:,.0f} trainable params")
    return "; ".join(parts)


def arm_metrics(row: Mapping[str, str], baseline: str) -> dict[str, float]:
    """The comparison as arm-run metrics (fractions, like ``test_em``), for sorting and charting."""
    out = {
        k: _num(row.get(c))
        for k, c in (("test_em_mean", "em_mean"), ("test_em_lo", "em_lo"), ("test_em_hi", "em_hi"))
    }
    if row["arm"] == baseline:
        out["delta_test_em"] = 0.0  # by definition; no interval
    else:
        primary = str(row.get("primary")).lower() == "true"
        out.update(
            delta_test_em=_num(row.get("delta_diff")),
            delta_test_em_lo=_num(row.get("delta_lo")),
            delta_test_em_hi=_num(row.get("delta_hi")),
            delta_test_em_p=_num(row.get("delta_p_adj" if primary else "delta_p")),
        )
    return {k: v for k, v in out.items() if not math.isnan(v)}


def describe_study(tracking_uri: str, study: str, question: str, report_dir: str | Path) -> str | None:
    """Put a built report's verdict where the MLflow UI shows it (call after ``build_report``).

    The experiment's description (``mlflow.note.content``) becomes the study's question, the
    current verdict and the report's path; every arm run gets a one-line description and the
    comparison metrics of ``arm_metrics``. Returns the experiment description (None: no experiment).
    """
    import csv

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return None
    report_dir = Path(report_dir).resolve()
    verdict = json.loads((report_dir / "verdict.json").read_text(encoding="utf-8"))
    with (report_dir / "summary.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    baseline = verdict["baseline"]
    asked = question.strip().rstrip(".") or f"Does combining LoRA with another method beat {baseline}?"
    lines = [
        f"**Question:** {asked}. Every arm is compared with the tuned baseline `{baseline}` on test "
        "exact match (EM, points), paired by seed and test item.",
        "",
        f"**Current verdict** ({time.strftime('%Y-%m-%d %H:%M')}):",
        *[f"- {line}" for line in verdict["lines"]],
        "",
        f"**Report:** {report_dir / 'report.html'} (and report.md; also under `report/` in the "
        f"artifacts of the study run `{study}`).",
    ]
    text = "\n".join(lines)
    if len(text) > 19_000:  # MLflow caps an experiment tag at 20,000 characters
        text = text[:18_900] + f"\n\n… (cut: the full verdict is in {report_dir / 'report.md'})"
    client.set_experiment_tag(exp.experiment_id, NOTE_TAG, text)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`ablate.level` = 'arm'",  # the experiment is the study
        max_results=1000,
    )
    by_arm: dict[str, list[str]] = {}
    for r in runs:
        by_arm.setdefault(r.data.tags.get("arm", ""), []).append(r.info.run_id)
    for row in rows:
        for run_id in by_arm.get(row["arm"], []):
            rec = MlflowRecorder(client, run_id)
            rec.set_tags({NOTE_TAG: arm_line(row, baseline)})
            rec.log_metrics(arm_metrics(row, baseline))
            rec.flush()
    for r in client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'study'"):
        client.set_tag(r.info.run_id, NOTE_TAG, verdict["lines"][-1][:5000] if verdict["lines"] else "")
    return text
