"""A real ``mlflow server`` on the study's store: hierarchy, step metrics and report artifacts over REST."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from ablate.report import REPORT_ARTIFACT_PATH, build_report, find_study_run
from ablate.report.publish import log_report
from tests.report_fixtures import EVAL_STEPS, STATES, val_loss_curve, write_study

STARTUP_TIMEOUT_S = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(
    store_uri: str, port: int, cwd: Path, log: Any, log_path: Path, timeout: float, env: dict | None = None
) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` over ``store_uri``, in its own process group (it forks
    workers), once its /health answers."""
    mlflow_bin = shutil.which("mlflow") or f"{sys.executable} -m mlflow"
    cmd = [*mlflow_bin.split(), "server", "--backend-store-uri", store_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer: {log_path.read_text()[-2000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def mlflow_server(store_uri: str, cwd: Path, log_path: Path) -> Iterator[str]:
    """``mlflow server`` on a free 127.0.0.1 port over ``store_uri``; yields its base URL."""
    port = _free_port()
    log = log_path.open("w")
    proc = start_mlflow_server(store_uri, port, cwd, log, log_path, STARTUP_TIMEOUT_S)
    base = f"http://127.0.0.1:{port}"
    try:
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (it forks workers)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The recorded study with its report logged, and the base URL of a server reading its store."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("served")
    rec = write_study(root)
    out = build_report(rec.name, rec.storage, rec.tracking_uri, root / "report")
    run_id = find_study_run(rec.tracking_uri, rec.name)
    assert run_id == rec.study_run_id
    log_report(rec.tracking_uri, run_id, out)

    with mlflow_server(rec.tracking_uri, root, root / "server.log") as base:
        yield rec, out, base


def _get(base: str, endpoint: str, **params) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(params)}", timeout=10) as r:
        return json.load(r)


def _search(base: str, exp_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [exp_id], "filter": filter_string, "max_results": 1000}).encode()
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r).get("runs", [])


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_hierarchy_metrics_and_report_artifacts_over_rest(served):
    rec, out, base = served
    exp_id = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=rec.name)["experiment"][
        "experiment_id"
    ]

    (study_run,) = _search(base, exp_id, "tags.`ablate.level` = 'study'")
    study_id = study_run["info"]["run_id"]
    assert study_id == rec.study_run_id

    arm_runs = _search(base, exp_id, "tags.`ablate.level` = 'arm'")
    assert {_tags(r)["arm"] for r in arm_runs} == set(rec.arm_run_ids)
    assert all(_tags(r)["mlflow.parentRunId"] == study_id for r in arm_runs)
    arm_ids = {_tags(r)["arm"]: r["info"]["run_id"] for r in arm_runs}

    trials = _search(base, exp_id, "tags.`ablate.level` = 'trial'")
    search = [r for r in trials if _tags(r)["phase"] == "search"]
    assert len(search) == sum(len(s) for s in STATES.values())
    assert len(trials) - len(search) == 4 * 3  # replicate runs: 4 arms x 3 seeds
    for r in trials:
        t = _tags(r)
        assert t["mlflow.parentRunId"] == arm_ids[t["arm"]]
    states = sorted(_tags(r)["state"] for r in search)
    assert states.count("pruned") == 3 and states.count("failed") == 3

    rep_id = rec.trial_run_ids[("lora+adapter", "replicate", 1)]
    hist = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rep_id, metric_key="val_loss")["metrics"]
    assert [m["step"] for m in hist] == list(EVAL_STEPS)
    assert [m["value"] for m in hist] == pytest.approx(val_loss_curve("lora+adapter", 1))
    train = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rep_id, metric_key="train_loss")[
        "metrics"
    ]
    assert len(train) == EVAL_STEPS[-1]
    grad = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=rep_id, metric_key="grad_norm/adapter")
    assert len(grad["metrics"]) == EVAL_STEPS[-1]

    listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=study_id, path=REPORT_ARTIFACT_PATH)["files"]
    names = {Path(f["path"]).name for f in listed}
    assert {"report.md", "report.html", "trials.csv", "replicates.csv", "summary.csv", "figures"} <= names
    figs = _get(
        base, "/api/2.0/mlflow/artifacts/list", run_id=study_id, path=f"{REPORT_ARTIFACT_PATH}/figures"
    )
    assert {Path(f["path"]).name for f in figs["files"]} == {p.name for p in (out / "figures").glob("*.png")}
    size = {Path(f["path"]).name: int(f["file_size"]) for f in listed if not f["is_dir"]}
    assert size["report.html"] == (out / "report.html").stat().st_size
