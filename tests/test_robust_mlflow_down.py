"""A tracking server that goes away mid-study: the study goes on (MLflow is a mirror, the Optuna
storage holds every outcome), warns once per outage, and records runs again once the server is back.

A real ``mlflow server`` on 127.0.0.1, killed with SIGKILL and restarted on the same port and
backend store; the study runs in its own process on model=tiny.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from ablate.errors import ConfigError
from ablate.tracking import RECHECK_S, MlflowTracker, unreachable
from tests.test_cli import override
from tests.test_report_mlflow_server import _free_port, start_mlflow_server
from tests.test_robust import ONE_ARM
from tests.test_study import storage_studies

ROOT = Path(__file__).resolve().parents[1]
WARNING = "mlflow unreachable at "
TAIL = ": runs are not recorded until it is back; trial outcomes stay in the study storage"
BACK = "answers again: runs are recorded again"
N_TRIALS = 8
STUDY = override(
    ONE_ARM,
    "study.report=true",
    "study.name=down",
    f"study.n_trials={N_TRIALS}",
    "study.pruner=none",  # every trial completes with a value: the storage check below is exact
)
# MLflow 3 starts a job runner with a handful of huey consumers beside the server (GenAI jobs);
# without them a start takes a few seconds instead of most of a minute on two cores. Telemetry off:
# its thread pops an environment variable while a request may be iterating os.environ (a KeyError
# that MLflow wraps in an MlflowException; seen in about one run in five here, unrelated to outages).
QUIET = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _tracker(uri: str) -> MlflowTracker:
    # MlflowTracker reads only ``uri`` and ``experiment`` of its config
    return MlflowTracker(SimpleNamespace(backend="mlflow", uri=uri, experiment="x"))  # type: ignore[arg-type]


def test_unreachable_store_is_absorbed_and_other_errors_raise(tmp_path, monkeypatch, capsys):
    """Nothing listens on the port: runs go unrecorded without an error, one warning for the
    outage, later calls skip at once; a user's mistake or a bug inside a run still raises, and a
    request the store refuses is not taken for an outage."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the outage at once, not after ~30 s
    url = f"http://127.0.0.1:{_free_port()}"
    tracker = _tracker(url)
    with tracker.run("first", tags={"arm": "lora"}) as rec:
        rec.log_params({"lr": 1e-3})
        rec.log_metrics({"loss": 1.0}, 1)
        rec.set_tags({"state": "complete"})
        rec.log_dict({"a": 1}, "config.yaml")
        assert rec.run_id is None  # the run never started: its writes are skipped, not sent
    t0 = time.perf_counter()
    for k in range(20):  # during the outage: no retries, no probe before RECHECK_S
        with tracker.run(f"run {k}") as rec:
            rec.log_metrics({"loss": 1.0}, 1)
    assert tracker.find_runs("tags.arm = 'lora'") == []
    assert tracker.experiment_id is None and tracker.outages == 1  # ablate train then writes locally
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith(WARNING)]
    assert warned == [f"{WARNING}{url} ([Errno 111] Connection refused){TAIL}"], err

    for raised in (ConfigError("lora.r", 0, "must be >= 1"), ValueError("a bug")):
        with pytest.raises(type(raised)), tracker.run("raises"):
            raise raised

    with pytest.raises(MlflowException) as refused:
        MlflowClient(url).get_experiment_by_name("x")
    assert "Connection refused" in unreachable(refused.value)
    local = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(MlflowException) as missing:
        local.get_run("0" * 32)
    assert unreachable(missing.value) is None  # RESOURCE_DOES_NOT_EXIST: not an outage
    up = _tracker(f"sqlite:///{tmp_path}/mlflow.db")  # a store that answers: a mistake still raises
    with pytest.raises(ConfigError), up.run("mistake") as rec:
        raise ConfigError("lora.r", 0, "must be >= 1")
    assert local.get_run(rec.run_id).info.status == "FAILED"
    assert unreachable(ConfigError("tracking.uri", "x", "bad")) is None
    assert unreachable(KeyError("x")) is None


class _Server:
    """``mlflow server`` on ``port`` over ``workdir/mlflow.db``, killed and started again at will."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port, self.proc = workdir, port, None
        self.url = f"http://127.0.0.1:{port}"
        self.log = (workdir / "server.log").open("a")

    def start(self, timeout: float = 90) -> None:
        store = f"sqlite:///{self.workdir}/mlflow.db"
        log_path = self.workdir / "server.log"
        env = {**os.environ, **QUIET}
        self.proc = start_mlflow_server(store, self.port, self.workdir, self.log, log_path, timeout, env)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a crash, not a shutdown
            self.proc.wait(timeout=10)


class _Output:
    """A process's merged stdout and stderr, line by line, as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # end of output
            self.cond.notify_all()

    def wait_for(self, match: Callable[[str], bool], after: int = 0, timeout: float = 120) -> int:
        """Index of the first line from ``after`` on that matches (fails at end of output)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    if self.lines[i] is None:
                        pytest.fail("the study ended early:\n" + "\n".join(filter(None, self.lines[-40:])))
                    if match(self.lines[i]):
                        return i
                if not self.cond.wait(timeout=max(deadline - time.monotonic(), 0)):
                    pytest.fail("timed out waiting:\n" + "\n".join(filter(None, self.lines[-40:])))


def test_study_survives_the_tracking_server_going_away(tmp_path):
    """The server is killed after trial 1 (outage 1) and started again; killed once more after the
    first trial recorded since, for good (outage 2, to the end of the study). The study exits 0;
    every trial and the seed are in the storage with their values; the report is written; the
    warning is printed once per outage; the runs created while the server was up are in MLflow,
    FINISHED, and are exactly the trials whose storage holds an MLflow run id."""
    server = _Server(tmp_path, _free_port())
    server.start()
    env = {
        **os.environ,
        **QUIET,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",  # stdout and stderr in the order they were written
        # one retry, at once (urllib3 waits from the second on): the outage shows at the first
        # write after the kill; with preflight's default, MLflow's retries would cover ~30 s of it
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    }
    t0 = time.perf_counter()
    study = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", *STUDY, f"tracking.uri={server.url}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = _Output(study)
    try:
        first = out.wait_for(lambda line: "] trial 1/" in line)  # printed once its run is FINISHED
        server.kill()
        warned = out.wait_for(lambda line: line.startswith(WARNING), first)
        # the study waits (SIGSTOP) while the server starts again, and until the tracker tries the
        # server again (RECHECK_S after the failure): its next run is recorded however fast the
        # machine runs unrecorded trials
        os.kill(study.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            server.start()
            time.sleep(max(stopped + RECHECK_S + 0.5 - time.monotonic(), 0))
        finally:
            os.kill(study.pid, signal.SIGCONT)
        back = out.wait_for(lambda line: BACK in line, warned)
        recorded = out.wait_for(lambda line: "] trial " in line, back)  # the trial whose run came back
        server.kill()  # outage 2 lasts to the end: the report is built from the storage alone
        code = study.wait(timeout=300)
    finally:
        if study.poll() is None:
            study.kill()
        server.kill()
    out.thread.join(timeout=10)
    took = time.perf_counter() - t0
    text = "\n".join(filter(None, out.lines))
    assert code == 0, text[-4000:]

    warnings = [line for line in out.lines if line and line.startswith(WARNING)]
    assert len(warnings) == 2 and all(w.endswith(TAIL) for w in warnings), warnings
    assert all(f"{WARNING}{server.url} (" in w for w in warnings)
    assert sum(BACK in line for line in out.lines if line) == 1

    studies = storage_studies(f"sqlite:///{tmp_path}/studies/down.db")
    search = studies["down/lora"]
    assert [t.number for t in search.trials] == list(range(N_TRIALS))
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in search.trials)
    seeds = studies["down/lora/replicate"].trials
    assert [(t.params["seed"], t.state) for t in seeds] == [(1, TrialState.COMPLETE)]
    assert search.user_attrs["replicates"]["1"]["test_em"] == seeds[0].value
    assert (tmp_path / "reports/down/report.md").exists()
    assert (tmp_path / "reports/down/summary.csv").read_text().count("\nlora,") == 1

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # the server's store, read directly
    exp = client.get_experiment_by_name("down")
    runs = client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'trial'", max_results=1000)
    by_number = {int(r.data.tags["trial_number"]): r for r in runs if r.data.tags["phase"] == "search"}
    with_run = {t.number: t.user_attrs.get("mlflow_run_id") for t in search.trials}
    assert {n: r.info.run_id for n, r in by_number.items()} == {n: i for n, i in with_run.items() if i}
    after = int(out.lines[recorded].split("] trial ", 1)[1].split("/", 1)[0]) - 1  # its trial number
    assert 0 in by_number and after in by_number and len(by_number) < N_TRIALS  # some went unrecorded
    for n in (0, after):
        assert by_number[n].info.status == "FINISHED" and "val_loss" in by_number[n].data.metrics
    print(f"\n{len(by_number)} of {N_TRIALS} search runs recorded across 2 outages; test took {took:.0f}s")


def test_ablate_train_keeps_a_local_record_when_mlflow_lost_its_run(tmp_path, monkeypatch):
    """MLflow is ``ablate train``'s only record: when it did not take the whole run, the results
    reach disk (config with secrets hidden, metrics, per-item outcomes), never only stdout."""
    import json
    from types import SimpleNamespace

    from ablate.commands import local_record
    from ablate.schema import TrialConfig

    monkeypatch.chdir(tmp_path)
    trial = TrialConfig.from_dict(
        {"peft": {"lora": {}}, "tracking": {"uri": "postgresql://u:s3cr3t@127.0.0.1/db"}}
    )
    outcome = SimpleNamespace(metrics={"test_em": 0.5}, items={"correct": [1, 0]}, run_id=None)
    path = local_record(trial, outcome)
    saved = json.loads(path.read_text())
    assert path.parent.name == "ablate-runs" and saved["metrics"] == {"test_em": 0.5}
    assert saved["items"] == {"correct": [1, 0]} and "s3cr3t" not in path.read_text()
