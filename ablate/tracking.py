"""Recording runs: MLflow (study > arm > trial runs) or nothing.

Downstream of everything else: stages hand plain dicts to a ``Recorder`` and
never import MLflow themselves. The MLflow backend uses ``MlflowClient`` with
explicit run ids (not the fluent active-run stack), so nested runs and
several recorders in one process cannot get mixed up. Metrics are buffered
and written in batches, one database round trip per flush.

MLflow is a mirror: the study's outcomes live in its Optuna storage. A store that stops
answering (a restarted tracking server or database) is retried by MLflow itself for about
half a minute (``preflight.limit_mlflow_retries``); past that, ``MlflowTracker.guarded``
warns once per outage, skips the write and goes on, and tries again on later writes, so the
study never fails for want of MLflow (``unreachable`` says which errors count as down).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.errors import flatten, redact
from ablate.schema import TrackingConfig

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (and edits) for a run or experiment
KIND_TAG = "mlflow.experimentKind"
#: a model-training experiment: `mlflow ui` opens it on the runs table, not MLflow 3's GenAI overview
KIND = "custom_model_development"
DATA_CONTEXT_TAG = "mlflow.data.context"
#: on a run some of whose writes were skipped while the store was down: it is not complete
GAP_TAG = "ablate.mlflow_gap"
# During an outage one call is tried again after RECHECK_S, then twice as long after each that
# failed although the server accepted a connection, up to RECHECK_MAX_S: a down server costs a
# worker a probe per interval, not MLflow's half minute of retries per write.
RECHECK_S = 5.0
RECHECK_MAX_S = 120.0
PROBE_TIMEOUT_S = 2.0  # a reachable server accepts a connection in milliseconds


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

    def guarded(self, call: Callable[[], Any], default: Any = None) -> Any:
        """``call()``; the MLflow backend skips it while its store does not answer."""
        return call()


_SKIPPED = object()


class MlflowRecorder(Recorder):
    """Writes of one run; with ``guarded`` (its tracker's), those the store does not take are
    skipped and counted in ``lost``."""

    def __init__(self, client: Any, run_id: str, guarded: Callable[..., Any] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self._metrics: list[Any] = []
        self._guarded = guarded
        self.lost = 0

    def _write(self, call: Callable[[], Any]) -> None:
        if self._guarded is None:
            call()
        elif self._guarded(call, _SKIPPED) is _SKIPPED:
            self.lost += 1

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]

        def write() -> None:
            existing = self.client.get_run(self.run_id).data.params
            new = [p for p in items if p.key not in existing]  # params are write-once (resume-safe)
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])

        self._write(write)

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
        while self._metrics:  # a batch the store did not take is dropped, not kept for later
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self._write(lambda batch=batch: self.client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in redact(dict(tags)).items()]
        self._write(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        if name.endswith((".yaml", ".yml")):
            self._write(lambda: self.client.log_dict(self.run_id, redact(dict(data)), name))
        else:
            text = json.dumps(redact(dict(data)), indent=2, default=str)
            self._write(lambda: self.client.log_text(self.run_id, text, name))

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._write(lambda: self.client.log_artifacts(self.run_id, str(path), subdir))
        else:
            self._write(lambda: self.client.log_artifact(self.run_id, str(path), subdir))

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
            self._write(lambda: self.client.log_inputs(self.run_id, datasets=inputs))


class MlflowTracker(Tracker):
    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self._client: Any = None
        self._experiment_id: str | None = None
        self._down: str | None = None  # why the store stopped answering; None while it answers
        self.outages = 0  # how many times it stopped answering (ablate train then writes a local record)
        self._retry_at = 0.0  # during an outage: no write is tried before this (time.monotonic)
        self._wait = RECHECK_S

    @property
    def client(self) -> Any:
        # Connect lazily: nothing (not even mlflow.db) is written before the first run opens.
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.cfg.uri)
        return self._client

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (created on first use); None while the store does not answer."""
        return self._experiment_id or self.guarded(self._experiment)

    def _experiment(self) -> str:
        # unguarded: inside a guarded call, so that a store that does not answer skips the whole call
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
            created = self.guarded(
                lambda: self.client.create_run(self._experiment(), run_name=name, tags=all_tags)
            )
            run_id = created.info.run_id if created is not None else None
        else:
            self.guarded(lambda: self.client.update_run(run_id, status="RUNNING"))
        if run_id is None:  # the store did not answer: this run goes unrecorded, its work goes on
            yield Recorder()
            return
        rec = MlflowRecorder(self.client, run_id, self.guarded)
        try:
            yield rec
        except KeyboardInterrupt:
            self._end(rec, "KILLED")
            raise
        except BaseException as exc:
            reason = getattr(exc, "ablate_state", None)
            if reason is not None:  # e.g. a pruned trial: an outcome, not a crash
                self._end(rec, "FINISHED", {"state": reason, "reason": str(exc) or reason})
            else:
                self._end(rec, "FAILED", {"state": "failed", "reason": f"{type(exc).__name__}: {exc}"[:4000]})
            raise
        else:
            self._end(rec, "FINISHED")

    def _end(self, rec: MlflowRecorder, status: str, tags: Mapping[str, Any] | None = None) -> None:
        rec.flush()
        if tags:
            rec.set_tags(tags)
        if rec.lost:  # written after an outage: without this it would pass for a complete run
            note = f"{rec.lost} write(s) skipped while MLflow was unreachable; the study storage holds the outcome"
            rec.set_tags({GAP_TAG: note})
        self.guarded(lambda: self.client.set_terminated(rec.run_id, status))

    def find_runs(self, filter_string: str) -> list[Any]:
        def search() -> list[Any]:
            return self.client.search_runs(
                [self._experiment()], filter_string=filter_string, max_results=10000
            )

        return self.guarded(search, [])

    def guarded(self, call: Callable[[], Any], default: Any = None) -> Any:
        """``call()`` (an MLflow read or write), or ``default`` when the store does not answer
        (``unreachable``; any other error propagates). The first such failure warns on stderr
        and starts an outage; during it calls are skipped at once, except one every ``RECHECK_S``
        or more that is tried if the server accepts a connection (``_answers``); the first that
        succeeds ends the outage. A failure is only seen after MLflow's own retries (about half
        a minute, ``preflight.limit_mlflow_retries``): a server that restarts within that loses
        nothing."""
        if self._down is not None:
            now = time.monotonic()
            if now < self._retry_at:
                return default
            if not self._answers():
                self._retry_at = now + self._wait
                return default
        try:
            result = call()
        except Exception as exc:
            why = unreachable(exc)
            if why is None:
                raise
            if self._down is not None:
                # it accepted a connection but not the call (a proxy whose server is gone): back off
                self._wait = min(2 * self._wait, RECHECK_MAX_S)
            self._retry_at = time.monotonic() + self._wait  # counted from the failure, not the warning
            if self._down is None:
                self._down = why
                self.outages += 1
                print(
                    f"mlflow unreachable at {redact(self.cfg.uri)} ({why}): runs are not recorded until "
                    "it is back; trial outcomes stay in the study storage",
                    file=sys.stderr,
                    flush=True,
                )
            return default
        if self._down is not None:
            self._down, self._wait = None, RECHECK_S
            print(
                f"mlflow at {redact(self.cfg.uri)} answers again: runs are recorded again",
                file=sys.stderr,
                flush=True,
            )
        return result

    def _answers(self) -> bool:
        """Whether an HTTP(S) tracking server accepts a TCP connection: a quick look before a call
        whose failure would cost MLflow's retries. Other stores fail fast: the call is the probe."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.cfg.uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return True
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
                return True
        except (OSError, ValueError):
            return False


def unreachable(exc: BaseException) -> str | None:
    """Why ``exc`` means the tracking store did not answer (a short reason), or None.

    Down: an ``MlflowException`` (MLflow wraps its HTTP and database errors in one), a ``requests``
    error or a SQLAlchemy ``DBAPIError`` whose chain of causes holds
    - ``requests.exceptions.ConnectionError``: connection refused, reset or aborted, a failed name
      lookup, a connect timeout (urllib3's ``MaxRetryError`` of a ``NewConnectionError`` or
      ``ProtocolError`` beneath it), after MLflow's retries;
    - ``requests.exceptions.Timeout``: no answer within ``MLFLOW_HTTP_REQUEST_TIMEOUT``;
    - ``requests.exceptions.RetryError``: still 408, 429 or 5xx after MLflow's retries (a proxy
      whose server is gone, a server whose database is restarting);
    - a SQLAlchemy ``OperationalError`` or ``InterfaceError``, or a connection it invalidated, of a
      database server (a database tracking URI whose server restarted: MLflow's
      TEMPORARILY_UNAVAILABLE); not of a SQLite file, where it means "database is locked" by
      another worker, not a server gone.
    Anything else is not an outage and propagates: a request the server refused (bad parameter,
    missing run), a ConfigError, a bug (including one MLflow wraps in an ``MlflowException``).
    """
    import requests
    import sqlalchemy  # MLflow's own dependency
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, (MlflowException, requests.RequestException, sqlalchemy.exc.DBAPIError)):
        return None
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__  # MLflow re-raises inside ``except`` without ``from``
    down = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)
    for e in chain:
        lost_db = (
            isinstance(e, sqlalchemy.exc.DBAPIError)
            and type(e.orig).__module__ != "sqlite3"
            and (
                e.connection_invalidated
                or isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
            )
        )
        if isinstance(e, down) or lost_db:
            root = chain[-1]  # e.g. ConnectionRefusedError, or urllib3's "too many 503 error responses"
            return (" ".join(str(root).split()) or type(root).__name__)[:160]
    return None


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
