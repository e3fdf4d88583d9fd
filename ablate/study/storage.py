"""The study's storage: check and open the Optuna RDB URL, the cross-worker lock, orphans.

Orphans (trials left RUNNING by a killed process) are failed through Optuna's
public API (``study.tell(number, state=FAIL)``) and listed in the study's user
attr ``interrupted_trials``, so their budget is given back on resume.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError, redact, require

WORKER = f"{socket.gethostname()}:{os.getpid()}"
INTERRUPTED = "interrupted"


def check_storage(url: str) -> None:
    """A one-line ConfigError for a malformed or unreachable storage URL; writes nothing."""
    import sqlalchemy

    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's URL
        raise ConfigError("study.storage", shown, f"malformed storage URL ({type(exc).__name__})") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        require(bool(db) and db != ":memory:", "study.storage", shown, "a sqlite storage needs a file path")
        parent = Path(db).parent
        if Path(db).parent == Path("studies"):
            parent.mkdir(exist_ok=True)
        require(parent.is_dir(), "study.storage", shown, f"directory {parent} does not exist")
    else:
        try:
            engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(parsed))
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - unreachable host, bad credentials, missing driver
            reason = " ".join(str(exc).split())[:160]
            raise ConfigError("study.storage", shown, f"cannot connect: {reason}") from None


def open_storage(url: str) -> Any:
    """The Optuna RDB storage (creates its tables on first use); call ``check_storage`` first."""
    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what happened
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers starting together race to create Optuna's schema; the loser retries.
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


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
        self.engine = sqlalchemy.create_engine(url) if self.backend.startswith("postgres") else None

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
            with self.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:  # other databases: no cross-worker lock (a budget may overshoot by a trial per worker)
            yield


@contextmanager
def no_lock(name: str) -> Iterator[None]:
    """The lock of a single process (in-memory storages, unit tests)."""
    yield


def interrupted(study: Any) -> set[int]:
    """Trial numbers that were interrupted (their budget is given back)."""
    numbers = set(study.user_attrs.get("interrupted_trials") or [])
    return numbers | {
        t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reason") == INTERRUPTED
    }


def mark_interrupted(study: Any, numbers: list[int]) -> None:
    if numbers:
        known = set(study.user_attrs.get("interrupted_trials") or [])
        study.set_user_attr("interrupted_trials", sorted(known | set(numbers)))


def fail_orphans(study: Any) -> list[int]:
    """Trials left RUNNING by a dead process of this host (killed mid-trial) are failed and listed
    as interrupted, which gives their budget back; trials of live workers are left alone."""
    from optuna.trial import TrialState

    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            orphans.append(t.number)
    mark_interrupted(study, orphans)
    return orphans


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
) -> None:
    """Fail orphans (of ``studies`` and ``orphans_of``), then wait until no worker runs a trial of
    ``studies``: best configurations are pinned, and replicate results summarised, only from
    finished work."""
    from optuna.trial import TrialState

    announced = False
    while True:
        for study in [*studies, *orphans_of]:
            with lock(study.study_name):
                fail_orphans(study)
        running = sum(len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) for s in studies)
        if not running:
            return
        if not announced:
            echo(f"waiting for {running} trial(s) running in other workers")
            announced = True
        time.sleep(poll_s)
