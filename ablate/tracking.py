"""Recording runs: MLflow (study > arm > trial runs) or nothing.

Downstream of everything else: stages hand plain dicts to a ``Recorder`` and
never import MLflow themselves. The MLflow backend uses ``MlflowClient`` with
explicit run ids (not the fluent active-run stack), so nested runs and
several recorders in one process cannot get mixed up. Metrics are buffered
and written in batches, one database round trip per flush.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.config import TrackingConfig
from ablate.errors import flatten, redact

PARENT_TAG = "mlflow.parentRunId"


class Recorder:
    """What a running stage may record. The base class records nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_dict(self, data: Mapping[str, Any], name: str) -> None: ...

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...

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
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            self._experiment_id = (
                exp.experiment_id if exp else self.client.create_experiment(self.cfg.experiment)
            )
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


def make_tracker(cfg: TrackingConfig) -> Tracker:
    if cfg.backend == "none":
        return Tracker()
    return MlflowTracker(cfg)
