"""Recording runs: MLflow (study > arm > trial runs) or nothing.

Downstream of everything else: stages hand plain dicts to a ``Recorder`` and
never import MLflow themselves. The MLflow backend uses ``MlflowClient`` with
explicit run ids (not the fluent active-run stack), so nested runs and
several recorders in one process cannot get mixed up. Metrics are buffered
and written in batches, one database round trip per flush.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.config import TrackingConfig
from ablate.errors import flatten, redact

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (and edits) for a run or experiment
KIND_TAG = "mlflow.experimentKind"
#: a model-training experiment: `mlflow ui` opens it on the runs table, not MLflow 3's GenAI overview
KIND = "custom_model_development"
DATA_CONTEXT_TAG = "mlflow.data.context"


class Recorder:
    """What a running stage may record. The base class records nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_dict(self, data: Mapping[str, Any], name: str) -> None: ...

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...

    def log_datasets(self, datasets: list[Mapping[str, Any]]) -> None:
        """Record what the run read: dicts with ``name``, ``digest``, ``source_type``, ``source``,
        ``rows``, ``context`` (train/validation/test) and optionally ``schema`` (MLflow dataset inputs)."""

    def flush(self) -> None: ...


class Tracker:
    """No-op backend (``tracking.backend=none``) and the interface of the MLflow one."""

    @contextmanager
    def run(
        self,
        name: str,
        *,
        tags: Mapping[str, Any] | None = None,
        parent: Recorder | None = None,
        run_id: str | None = None,
    ) -> Iterator[Recorder]:
        yield Recorder()

    def find_runs(self, filter_string: str) -> list[Any]:
        return []


class MlflowRecorder(Recorder):
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._metrics: list[Any] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are write-once (resume-safe)
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if k == "step" or v is None:
                continue
            self._metrics.append(Metric(k, float(v), now, int(step or 0)))
        if len(self._metrics) >= 500:
            self.flush()

    def flush(self) -> None:
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in redact(dict(tags)).items()]
        )

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        if name.endswith((".yaml", ".yml")):
            self.client.log_dict(self.run_id, redact(dict(data)), name)
        else:
            self.client.log_text(self.run_id, json.dumps(redact(dict(data)), indent=2, default=str), name)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), subdir)
        else:
            self.client.log_artifact(self.run_id, str(path), subdir)

    def log_datasets(self, datasets: list[Mapping[str, Any]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(
                    name=d["name"],
                    digest=d["digest"],
                    source_type=d["source_type"],
                    source=json.dumps(d["source"], sort_keys=True, default=str),
                    schema=json.dumps(d["schema"]) if d.get("schema") else None,
                    profile=json.dumps({"num_rows": int(d["rows"]), **(d.get("profile") or {})}),
                ),
                tags=[InputTag(DATA_CONTEXT_TAG, d["context"])],
            )
            for d in datasets
        ]
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)


class MlflowTracker(Tracker):
    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        # Connect lazily: nothing (not even mlflow.db) is written before the first run opens.
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.cfg.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = ensure_experiment(self.client, self.cfg.experiment)
        return self._experiment_id

    @contextmanager
    def run(
        self,
        name: str,
        *,
        tags: Mapping[str, Any] | None = None,
        parent: Recorder | None = None,
        run_id: str | None = None,
    ) -> Iterator[Recorder]:
        """Open a new run (or reopen ``run_id``); FINISHED on success, FAILED/KILLED otherwise."""
        all_tags = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        if parent is not None and parent.run_id:
            all_tags[PARENT_TAG] = parent.run_id
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        rec = MlflowRecorder(self.client, run_id)
        try:
            yield rec
        except KeyboardInterrupt:
            rec.flush()
            self.client.set_terminated(run_id, "KILLED")
            raise
        except BaseException as exc:
            rec.flush()
            reason = getattr(exc, "ablate_state", None)
            if reason is not None:  # e.g. a pruned trial: an outcome, not a crash
                rec.set_tags({"state": reason, "reason": str(exc) or reason})
                self.client.set_terminated(run_id, "FINISHED")
            else:
                rec.set_tags({"state": "failed", "reason": f"{type(exc).__name__}: {exc}"[:4000]})
                self.client.set_terminated(run_id, "FAILED")
            raise
        else:
            rec.flush()
            self.client.set_terminated(run_id, "FINISHED")

    def find_runs(self, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10000)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment (``KIND``). An older
    experiment without a kind gets it; a kind someone chose in the UI is left alone."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={KIND_TAG: KIND})
    if KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return exp.experiment_id


def make_tracker(cfg: TrackingConfig) -> Tracker:
    if cfg.backend == "none":
        return Tracker()
    return MlflowTracker(cfg)


# -- what the MLflow UI shows of a finished study --------------------------------------------------


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
