"""The study's storage: check and open the Optuna RDB URL, the cross-worker lock, lost workers.

A trial whose worker died is found two ways: Optuna's heartbeat (any host: no heartbeat for
``grace_s`` seconds) and, as a fast path, a dead pid on this host. Either way it is failed,
listed in the study's user attr ``interrupted_trials`` (its budget is given back) and retried
with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``: a WAITING copy that
the next ask takes), and ``Reaper.on_lost`` marks its MLflow run FAILED.

One storage format for every case: Optuna's RDB storage, SQLite by default. Optuna recommends
its journal storage for several processes on one machine because SQLite serialises writers and
may answer "database is locked". Here that is handled instead of switching formats: every ask is
serialised by ``StorageLock`` (a file lock next to the database), SQLite waits up to 60 s for a
lock (``timeout``) instead of failing, and the writes are small (one trial's outcome). The RDB
format keeps what the journal would lose: the heartbeat (RDB only), ``optuna-dashboard`` and the
report reading ``sqlite:///studies/NAME.db``, and the same code path as PostgreSQL. The 4-worker
test in tests/test_robust_workers.py runs on it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError, redact, require
from ablate.preflight import SQL_SCHEMES, check_database_writable, check_sqlite_file
from ablate.schema import Heartbeat

# How this worker names itself on its trials (user attr ``worker``): host:pid, which the per-host
# orphan check reads. ABLATE_WORKER overrides it (a container's name; tests posing as another host).
WORKER = os.environ.get("ABLATE_WORKER") or f"{socket.gethostname()}:{os.getpid()}"
INTERRUPTED = "interrupted"
# A trial asked past the budget while the storage lock was lost (its connection died mid-ask, so
# two workers asked at once): failed at once, before any work, and not counted.
SURPLUS = "surplus"


def replicate_suffix(attrs: Mapping[str, Any]) -> str:
    """The replication study of an arm's current best, from its search study's user attrs:
    ``NAME/<arm>/replicate``, then ``/replicate.2``, ``/replicate.3`` after each re-pin (a larger
    ``study.n_trials``), so an earlier best's replicates stay recorded beside the new ones."""
    gen = int(attrs.get("pin_generation") or 1)
    return "/replicate" if gen == 1 else f"/replicate.{gen}"


#: ``study.search_repeats``: search r (1-based) of an arm is the study ``NAME/<arm>/search<r>`` (the
#: first is ``NAME/<arm>`` itself), and its best is replicated on seeds ``(r - 1) * STRIDE + 1, ...``:
#: every search has seeds of its own (a seed shared by two searches would tie their rows), a raised
#: ``study.seeds`` never runs into the next search's seeds, and a seed names its search.
SEARCH_SEED_STRIDE = 10_000


def task_study(study: str, task: str) -> str:
    """``study.tasks``: the study of one task, ``NAME.<task>`` (its arms ``NAME.<task>/<arm>``)."""
    return f"{study}.{task}"


def search_suffix(repeat: int) -> str:
    """The study-name suffix of search ``repeat`` of an arm (``""`` for the first)."""
    return "" if repeat <= 1 else f"/search{repeat}"


def search_of(seed: int) -> int:
    """Which search (1-based) a replicate seed belongs to (``SEARCH_SEED_STRIDE``)."""
    return max(int(seed) - 1, 0) // SEARCH_SEED_STRIDE + 1  # seed 0 (a table made elsewhere): the first


def lora_alone_suffix(attrs: Mapping[str, Any]) -> str:
    """The study of a combination's own LoRA settings trained alone (``study.interference``),
    ``NAME/<arm>/lora-alone`` (``.2``, ... after a re-pin, as :func:`replicate_suffix`)."""
    return replicate_suffix(attrs).replace("/replicate", "/lora-alone")


def check_storage(url: str) -> None:
    """A one-line ConfigError for a malformed or unreachable storage URL; writes nothing."""
    import sqlalchemy

    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's URL
        raise ConfigError("study.storage", shown, f"malformed storage URL ({type(exc).__name__})") from None
    backend = parsed.get_backend_name()
    require(
        backend in SQL_SCHEMES,
        "study.storage",
        shown,
        "must be an SQLAlchemy database URL (sqlite, postgresql, mysql)",
    )
    if backend == "sqlite":
        db = parsed.database or ""
        require(bool(db) and db != ":memory:", "study.storage", shown, "a sqlite storage needs a file path")
        # studies/ is created by open_storage, once every check has passed (nothing written before)
        check_sqlite_file("study.storage", shown, db)
    else:
        check_database_writable("study.storage", shown, url)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Connections that survive a restarted database: ``pool_pre_ping`` replaces a pooled
    connection the server dropped (restart, ``pg_terminate_backend``) before it is used; SQLite
    waits for a lock held by another worker instead of failing at once."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"creator": functools.partial(_sqlite_connect, parsed.database)}
    return {"pool_pre_ping": True, "connect_args": _connect_timeout(parsed)}


def _sqlite_connect(path: str) -> Any:
    """A SQLite connection in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends to
    the log instead of rewriting and syncing a rollback journal, which halved Optuna's cost per
    trial (ask, 5 suggestions, 3 attributes, tell: 120 -> 61 ms here), a tenth of a tiny-model
    trial. WAL keeps the database consistent through a crash or ``kill -9`` (a power cut may lose the
    last commits, never the file); readers no longer block the one writer, which several workers on
    one machine want; the log is folded back when the last connection closes."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)  # wait for another worker's lock
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_storage(url: str, heartbeat: Heartbeat | None = None, reaper: Reaper | None = None) -> Any:
    """The Optuna RDB storage (creates its tables on first use); call ``check_storage`` first.
    With ``heartbeat``, running trials write heartbeats and ``reaper.stale`` handles the lost ones."""
    import warnings

    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what happened
    # ask/tell with a heartbeat is what this module does on purpose (Optuna warns it expects optimize)
    warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        beat = {
            "heartbeat_interval": heartbeat.interval_s,
            "grace_period": heartbeat.grace_s,
            "heartbeat_stale_trial_callback": (reaper or Reaper(heartbeat.max_retry)).stale,
        }

    def build() -> Any:
        for attempt in range(5):
            try:
                return retrying_storage_class()(url, engine_kwargs=engine_kwargs(url), **beat)
            except sqlalchemy.exc.SQLAlchemyError:
                # Workers starting together race to create Optuna's schema; the loser retries.
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    # The constructor reads the schema version over a connection that can die too; Optuna wraps
    # that in StorageInternalError, which the loop above does not see.
    return retry_lost(build, "opening the storage")


# A storage call whose database connection died (a restarted server, ``pg_terminate_backend``, "too
# many clients") is retried this many times in all, waiting 0.5, 1, 2, 4, 8, 10, 10 s in between
# (~35 s: a PostgreSQL restart); then the error propagates.
RETRY_ATTEMPTS = 8
RETRY_WAIT_S = (0.5, 10.0)
_no_retry = threading.local()  # the heartbeat thread: a missed beat is written at the next one


def lost_connection(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it: Optuna wraps SQLAlchemy's errors in StorageInternalError)
    is a database connection that failed or died, not a mistake in what was written."""
    import sqlalchemy

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and (
            exc.connection_invalidated
            or isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_lost(call: Callable[[], Any], what: str, on_retry: Callable[[], None] | None = None) -> Any:
    """``call()``, again after a lost connection (see ``RETRY_ATTEMPTS``); ``on_retry`` runs before
    each retry (drop the dead connection). Other errors propagate at once."""
    import sys

    wait = RETRY_WAIT_S[0]
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == RETRY_ATTEMPTS or getattr(_no_retry, "on", False) or not lost_connection(exc):
                raise
            reason = " ".join(str(exc.__cause__ or exc).split())[:160]
            print(
                f"storage connection lost in {what} ({reason}); retry {attempt}/{RETRY_ATTEMPTS - 1} "
                f"in {wait:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
            wait = min(wait * 2, RETRY_WAIT_S[1])
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")


# Storage calls retried as they are: reads, and writes that set a value (doing them twice is doing
# them once). ``_set_trial_param`` ignores the duplicate row a retried insert would add.
_IDEMPOTENT = (
    "create_new_study",  # a retry after a commit raises DuplicatedStudyError: create_study loads it
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",  # what Optuna's cache reads trials with
    "get_best_trial",
    "_get_best_trial_id",
    "get_n_trials",
    "get_trial_number_from_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


@functools.cache
def retrying_storage_class() -> type:
    """Optuna's RDBStorage whose calls survive a dropped database connection (issue 9, item 7).

    ``pool_pre_ping`` replaces a connection the server dropped while it sat in the pool; this
    handles one dropped during a call: the call is retried (``retry_lost``) on a fresh connection.
    A write whose connection died may or may not have been committed, so the two writes that are
    not idempotent check what the database holds before they are redone:

    - ``_create_new_trial`` (ask, enqueue, a lost trial's retry): a trial created since the first
      attempt is taken as this call's (asks are serialised by ``StorageLock``, so no other worker
      creates one meanwhile) instead of creating a second one that would stay RUNNING forever;
    - ``set_trial_state_values``: a trial that is already in the state being written (finished
      with the same values, or RUNNING since this call began) was written by this call.

    A subclass rather than a wrapper: Optuna wraps an RDBStorage in its cache and recognises it as
    a heartbeat storage (``fail_stale_trials``), which a wrapper would defeat."""
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    def retried(name: str) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = getattr(RDBStorage, name)
            return retry_lost(lambda: call(self, *args, **kwargs), name, self._drop_connection)

        method.__name__ = name
        return method

    class RetryingRDBStorage(RDBStorage):
        def _drop_connection(self) -> None:
            with contextlib.suppress(Exception):
                self.scoped_session.remove()

        def _last_trial_id(self, study_id: int) -> int:
            import sqlalchemy

            def last() -> int:
                session = self.scoped_session()
                try:
                    query = sqlalchemy.select(sqlalchemy.func.max(models.TrialModel.trial_id))
                    found = session.execute(query.where(models.TrialModel.study_id == study_id)).scalar()
                    return int(found or 0)
                finally:
                    session.close()

            return retry_lost(last, "create_new_trial", self._drop_connection)

        def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
            before = self._last_trial_id(study_id)
            first = [True]

            def create() -> Any:
                if not first[0]:
                    made = self._last_trial_id(study_id)
                    if made > before:  # the lost attempt was committed after all: that trial is ours
                        return self.get_trial(made)
                first[0] = False
                return RDBStorage._create_new_trial(self, study_id, template_trial)

            return retry_lost(create, "create_new_trial", self._drop_connection)

        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            started = datetime.datetime.now()
            first = [True]

            def write() -> bool:
                retry = not first[0]
                first[0] = False
                try:
                    ok = RDBStorage.set_trial_state_values(self, trial_id, state, values)
                except optuna.exceptions.UpdateFinishedTrialError:
                    if retry and self._wrote(trial_id, state, values, started):
                        return True
                    raise
                if not ok and retry and state == TrialState.RUNNING:
                    return self._wrote(trial_id, state, values, started)
                return ok

            return retry_lost(write, "set_trial_state_values", self._drop_connection)

        def _wrote(self, trial_id: int, state: Any, values: Any, since: Any) -> bool:
            """Whether the trial holds what a lost attempt of this call meant to write."""
            now = retry_lost(lambda: RDBStorage.get_trial(self, trial_id), "get_trial", self._drop_connection)
            if now.state != state:
                return False
            if state == TrialState.RUNNING:
                return now.datetime_start is not None and now.datetime_start >= since
            return values is None or list(now.values or []) == list(values)

    for name in _IDEMPOTENT:
        if hasattr(RDBStorage, name):
            setattr(RetryingRDBStorage, name, retried(name))
    return RetryingRDBStorage


def _connect_timeout(parsed: Any) -> dict[str, Any]:
    return {"connect_timeout": 5} if parsed.get_backend_name().startswith("postgres") else {}


class StorageLock:
    """A lock shared by every worker of a storage: a file lock next to a SQLite file, a
    PostgreSQL advisory lock otherwise. Optuna has no "ask unless the budget is spent"."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        parsed = sqlalchemy.engine.make_url(url)
        self.backend = parsed.get_backend_name()
        self.path = Path(parsed.database or "").with_suffix(".lock") if self.backend == "sqlite" else None
        self.engine = (
            sqlalchemy.create_engine(url, **engine_kwargs(url))
            if self.backend.startswith("postgres")
            else None
        )

    @property
    def shared(self) -> bool:
        """Whether asks of different workers are serialised (else a budget may overshoot)."""
        return self.path is not None or self.engine is not None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.path is not None:
            import fcntl

            with open(self.path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        elif self.engine is not None:
            import sqlalchemy

            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            conn = retry_lost(lambda: self._advisory_lock(key), "storage lock")
            try:
                yield
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except Exception as exc:
                    # The connection died while the lock was held: the server released the lock
                    # with its session (meanwhile another worker may have taken it; the storage
                    # calls above were retried on their own connections).
                    if not lost_connection(exc):
                        raise
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()
        else:  # other databases: no cross-worker lock (a budget may overshoot by a trial per worker)
            yield

    def _advisory_lock(self, key: int) -> Any:
        import sqlalchemy

        assert self.engine is not None
        conn = self.engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn


@contextmanager
def no_lock(name: str) -> Iterator[None]:
    """The lock of a single process (in-memory storages, unit tests)."""
    yield


def interrupted(study: Any) -> set[int]:
    """Trial numbers that were interrupted or surplus (their budget is given back)."""
    numbers = set(study.user_attrs.get("interrupted_trials") or [])
    return numbers | {
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("reason") in (INTERRUPTED, SURPLUS)
    }


def mark_interrupted(study: Any, numbers: list[int]) -> None:
    if numbers:
        known = set(study.user_attrs.get("interrupted_trials") or [])
        study.set_user_attr("interrupted_trials", sorted(known | set(numbers)))


def fail_orphans(study: Any, on_failed: Callable[[Any, Any], None] | None = None) -> list[int]:
    """Trials left RUNNING by a dead process of this host (killed mid-trial) are failed and listed
    as interrupted, which gives their budget back; trials of live workers are left alone.
    ``on_failed(study, frozen_trial)`` sees each (the reaper retries it)."""
    from optuna.trial import TrialState

    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            orphans.append(t)
    mark_interrupted(study, [t.number for t in orphans])
    for t in orphans:
        if on_failed is not None:
            on_failed(study, t)
    return [t.number for t in orphans]


class Reaper:
    """Finds trials whose worker is gone, fails them and retries them (call under the study's lock).

    Optuna's heartbeat (``fail_stale_trials``) finds them on any host once ``grace_s`` has passed;
    a dead pid on this host is found at once (the fast path). Both end in ``stale``: the trial's
    budget is given back (``interrupted_trials``), Optuna's ``RetryHeartbeatStaleTrialCallback``
    enqueues it again with the same parameters (a replicate: the same seed) at most ``max_retry``
    times, and ``on_lost`` sees it (the runner marks its MLflow run FAILED)."""

    def __init__(self, max_retry: int = 2, on_lost: Callable[[Any, Any], None] | None = None) -> None:
        self.max_retry = max_retry
        self.on_lost = on_lost
        self.lost: list[tuple[str, int]] = []  # (study name, trial number) this worker reaped

    def stale(self, study: Any, trial: Any) -> None:
        import optuna

        mark_interrupted(study, [trial.number])
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)
        self.lost.append((study.study_name, trial.number))
        if self.on_lost is not None:
            try:
                self.on_lost(study, trial)
            except Exception as exc:  # noqa: BLE001 - e.g. MLflow down: the storage already holds the outcome
                import sys

                print(f"[{study.study_name}] trial {trial.number}: could not record its loss ({exc})",
                      file=sys.stderr, flush=True)  # fmt: skip

    def __call__(self, study: Any) -> None:
        import optuna

        fail_orphans(study, self.stale)
        optuna.storages.fail_stale_trials(study)  # calls self.stale (the storage's callback) per trial


@contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """While the block runs, write ``trial``'s heartbeat every ``interval_s`` (RDB storages with a
    heartbeat; otherwise nothing). A failed write (a database restarting) is retried at the next beat
    rather than ending the thread, which would let other workers reap a live trial."""
    # Optuna has no public handle on a study's storage (a cache around the RDB storage) or a trial's id
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    storage.record_heartbeat(trial._trial_id)  # at once: a trial without any heartbeat is never reaped
    stop = threading.Event()

    def beat() -> None:
        _no_retry.on = True  # a beat that fails is written at the next one, not retried meanwhile
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # connection lost: try again at the next beat
                storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name="ablate-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def wait_for_running(
    studies: list[Any],
    lock: Callable[[str], Any],
    echo: Callable[[str], None],
    *,
    orphans_of: Iterable[Any] = (),
    poll_s: float = 5.0,
    reaper: Callable[[Any], Any] | None = None,
) -> None:
    """Reap lost trials (of ``studies`` and ``orphans_of``), then wait until no worker runs a trial of
    ``studies``: best configurations are pinned, and replicate results summarised, only from
    finished work."""
    from optuna.trial import TrialState

    announced = False
    reap = reaper or fail_orphans
    while True:
        for study in [*studies, *orphans_of]:
            with lock(study.study_name):
                reap(study)
        running = sum(len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) for s in studies)
        if not running:
            return
        if not announced:
            echo(f"waiting for {running} trial(s) running in other workers")
            announced = True
        time.sleep(poll_s)
