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
    elif scheme == "sqlite":
        db = uri.split("///", 1)[1] if "///" in uri else ""
        require(
            bool(db) and db != ":memory:", "tracking.uri", shown, "a sqlite tracking store needs a file path"
        )
        parent = Path(db).parent
        require(parent.is_dir(), "tracking.uri", shown, f"directory {parent} does not exist")
    elif scheme in ("", "file"):
        path = Path(parts.path if scheme == "file" else uri)
        require(
            path.is_dir() or path.parent.is_dir(),
            "tracking.uri",
            shown,
            f"directory {path.parent} does not exist",
        )
    elif scheme.startswith(("postgresql", "mysql", "mssql")):
        require(bool(parts.hostname), "tracking.uri", shown, "no host in the URL")
        try:
            port = parts.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme.split("+")[0]]
        except (ValueError, KeyError):
            raise ConfigError("tracking.uri", shown, "bad port") from None
        _probe("tracking.uri", shown, parts.hostname or "", port)
    else:
        raise ConfigError(
            "tracking.uri",
            shown,
            "unsupported scheme (http(s)://, sqlite:///, a directory, or a database URL)",
        )


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
