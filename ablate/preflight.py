"""Checks that run before anything is trained or written: names that become paths, services that
must answer.

A study name becomes ``studies/NAME.db``, ``reports/NAME/``, an MLflow experiment and Optuna study
names; an arm name becomes part of those. ``check_name`` refuses anything that could escape a
directory or confuse a terminal. ``check_tracking`` fails within seconds on a tracking server or
database that does not answer, instead of hanging in MLflow's HTTP retries, and creates nothing.
Light on purpose (no torch, no mlflow): ``ablate report`` and the CLI use it.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ablate.errors import ConfigError, redact, require

# Letters, digits and . _ - + @ (arm names are like lora+adapter@nf4); no separators, no spaces.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+@-]*$")
MAX_NAME = 100
PROBE_TIMEOUT_S = 3.0  # one connection attempt; a reachable server answers in milliseconds
ANSWER_TIMEOUT_S = 8.0  # a store that accepts the connection must answer (and take a write) by then
SQLITE_MAGIC = b"SQLite format 3\x00"
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_name(key: str, value: Any) -> str:
    """``value`` is safe as one path component, an Optuna study name and an MLflow experiment name."""
    text = value if isinstance(value, str) else str(value)
    require(
        isinstance(value, str),
        key,
        value,
        f"must be a name, not a {type(value).__name__} (quote it: {key}=\"'{text}'\")",
    )
    require(bool(value), key, value, "must be a non-empty name")
    require(
        not any(ord(c) < 32 or ord(c) == 127 for c in text), key, text, "control characters are not allowed"
    )
    require(".." not in text, key, text, "'..' is not allowed in a name")
    require(
        "/" not in text and "\\" not in text,
        key,
        text,
        "a name cannot contain / or \\ (it becomes a file name)",
    )
    require(len(text) <= MAX_NAME, key, text, f"longer than {MAX_NAME} characters")
    require(
        _NAME.match(text) is not None,
        key,
        text,
        "use letters, digits and . _ - + @ (starting with a letter, digit or _)",
    )
    return text


def check_tracking(backend: str, uri: str) -> None:
    """A one-line ConfigError, within a few seconds, when the tracking store cannot be reached."""
    if backend != "mlflow":
        return
    shown = redact(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        require(bool(parts.hostname), "tracking.uri", shown, "no host in the URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ConfigError("tracking.uri", shown, "bad port") from None
        _probe("tracking.uri", shown, parts.hostname or "", port)
        _mlflow_answers(uri, shown)
    elif scheme == "sqlite":
        db = uri.split("///", 1)[1] if "///" in uri else ""
        require(
            bool(db) and db != ":memory:", "tracking.uri", shown, "a sqlite tracking store needs a file path"
        )
        check_sqlite_file("tracking.uri", shown, db)
    elif scheme in ("", "file"):
        # MLflow 3 refuses a directory (file store) as its tracking store: say so, and what works.
        raise ConfigError(
            "tracking.uri",
            shown,
            "not a tracking store MLflow 3 accepts: use sqlite:///PATH/mlflow.db, a database URL or "
            "an http(s):// server",
        )
    elif scheme.startswith(("postgresql", "mysql", "mssql")):
        require(bool(parts.hostname), "tracking.uri", shown, "no host in the URL")
        try:
            port = parts.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme.split("+")[0]]
        except (ValueError, KeyError):
            raise ConfigError("tracking.uri", shown, "bad port") from None
        _probe("tracking.uri", shown, parts.hostname or "", port)
        check_database_writable("tracking.uri", shown, uri)
    else:
        raise ConfigError(
            "tracking.uri",
            shown,
            "unsupported scheme (http(s)://, sqlite:///, a directory, or a database URL)",
        )


def check_sqlite_file(key: str, shown: str, db: str) -> None:
    """A SQLite store path that can work: its directory exists, it is not a directory, and an
    existing file is an SQLite database (a text file or a truncated one would be overwritten or
    crash deep inside SQLAlchemy; a 0-byte file is a new database)."""
    path = Path(db)
    require(not path.is_dir(), key, shown, f"{db} is a directory, not a database file")
    parent = path.parent
    require(not parent.exists() or parent.is_dir(), key, shown, f"{parent} is a file, not a directory")
    # studies/ (the default's folder) is created once every check has passed: nothing before
    require(parent.is_dir() or str(parent) == "studies", key, shown, f"directory {parent} does not exist")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        require(head == SQLITE_MAGIC, key, shown, f"{db} is not an SQLite database (left untouched)")
        require(
            path.stat().st_size % 512 == 0,
            key,
            shown,
            f"{db} is truncated (not a whole number of SQLite pages; left untouched)",
        )
    target = path if path.exists() else path.parent
    if target.exists():
        require(os.access(target, os.W_OK), key, shown, f"{target} is not writable")


def check_database_writable(key: str, shown: str, url: str) -> None:
    """Connect within seconds and take a write that leaves nothing behind (a temporary table,
    dropped with the connection): a reachable server with a missing database, wrong rights or
    another service on the port is refused before anything is trained."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
        backend = parsed.get_backend_name()
        args = {"connect_timeout": int(ANSWER_TIMEOUT_S)} if backend in ("postgresql", "mysql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE TEMPORARY TABLE ablate_write_probe (x INTEGER)"))
            conn.execute(sqlalchemy.text("DROP TABLE ablate_write_probe"))
            conn.rollback()
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - no such database, no rights, no driver: the user's URL
        reason = redact(" ".join(str(exc).split()).split(" (Background on this error")[0])[:200]
        raise ConfigError(key, shown, f"cannot write there: {reason}") from None


def _mlflow_answers(uri: str, shown: str) -> None:
    """The server at ``uri`` answers MLflow's REST API within seconds (another service on the port,
    or a port that accepts and never answers, is refused here, not after training)."""
    import json
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT_S) as resp:  # noqa: S310 - the user's server
            body = json.loads(resp.read(1_000_000) or b"{}")
        require(isinstance(body, dict), "tracking.uri", shown, "does not answer as an MLflow server")
    except ConfigError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            "tracking.uri",
            shown,
            f"does not answer as an MLflow tracking server within {ANSWER_TIMEOUT_S:.0f} s ({why})",
        ) from None


def _probe(key: str, shown: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(key, shown, f"cannot connect to {host}:{port} ({reason})") from None


def limit_mlflow_retries() -> None:
    """MLflow's HTTP client retries a refused request with exponential backoff for minutes by
    default. Here a few retries with short backoff (about half a minute in all) cover a restarting
    server; one that stays down surfaces as an error instead of hanging the worker. Settings the
    user exported win. Telemetry off too: offline it only fails, and MLflow 3.17's telemetry thread
    removes an environment variable while a request may be reading the environment (a KeyError
    inside an MlflowException that crashed about one study in five in tests/test_robust_mlflow_down.py)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
