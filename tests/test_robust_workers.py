"""Many workers on one study, as separate processes on model=tiny: ``workers=4`` on the default
SQLite storage, 4 workers on PostgreSQL with one killed by ``kill -9`` mid-trial (failed by the
heartbeat, retried), and 2 workers whose database connections are dropped mid-study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from ablate.study.budget import counted
from tests.test_cli import run_cli
from tests.test_robust import mlflow_run_running
from tests.test_study import postgres_url, storage_studies  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("lora", "lora+adapter")
SMALL = [
    "study=lora_vs_adapter",
    "model=tiny",
    "budget=smoke",
    "study.factorial=false",
    "study.matched=false",
    "study.n_trials=4",
    "study.seeds=2",
    "search.lora.r.high=16",
    "search.adapter.width.high=16",
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def check_shared_budget(studies: dict, name: str, n_trials: int, seeds: int) -> set[str]:
    """Every arm spent exactly its budget, no trial number twice, no configuration completed twice,
    every seed replicated once; returns the workers that took trials."""
    workers = set()
    for arm in ARMS:
        study = studies[f"{name}/{arm}"]
        done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(counted(study)) == n_trials == len(done), [(t.number, t.state) for t in study.trials]
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
        configs = [tuple(sorted(t.params.items())) for t in done]
        assert len(configs) == len(set(configs)), configs
        reps = [t for t in studies[f"{name}/{arm}/replicate"].trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["seed"] for t in reps) == list(range(1, seeds + 1))
        assert sorted(study.user_attrs["replicates"]) == [str(s) for s in range(1, seeds + 1)]
        workers |= {t.user_attrs["worker"] for t in [*study.trials, *reps]}
    return workers


def test_four_local_workers_on_the_default_storage_match_one_worker(workdir, capsys):
    """``workers=4`` on sqlite:///studies/NAME.db: the budget split without overlap, one MLflow
    study run above everything, and a report naming the same arms as a single worker's."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", *SMALL, "study.name=four", "workers=4"],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    four_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert proc.stdout.count("worker w") == 4 and "4 workers done" in proc.stdout
    studies = storage_studies("sqlite:///studies/four.db")
    workers = check_shared_budget(studies, "four", 4, 2)
    assert len(workers) >= 2, workers  # the trials really were split between processes

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("four")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    levels = Counter((r.data.tags["ablate.level"], r.data.tags.get("phase")) for r in runs)
    assert levels == {
        ("study", None): 1,
        ("arm", None): 2,
        ("trial", "search"): 8,
        ("trial", "replicate"): 4,
        ("trial", "lora-alone"): 2,  # the combination's LoRA settings alone: each seed once, over 4 workers
    }
    by_id = {r.info.run_id: r for r in runs}
    study_run = next(r for r in runs if r.data.tags["ablate.level"] == "study")
    for r in runs:
        if r.data.tags["ablate.level"] == "trial":
            arm_run = by_id[r.data.tags["mlflow.parentRunId"]]
            assert arm_run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
    keys = Counter(
        (r.data.tags["arm"], r.data.tags["phase"], r.data.tags["trial_number"])
        for r in runs
        if "phase" in r.data.tags
    )
    assert max(keys.values()) == 1  # no trial recorded twice

    t0 = time.perf_counter()
    code, _, err = run_cli([*SMALL, "study.name=one"], capsys)
    one_s = time.perf_counter() - t0
    assert code == 0, err
    arms = [set(pd.read_csv(f"reports/{n}/summary.csv")["arm"]) for n in ("four", "one")]
    assert arms[0] == arms[1] == set(ARMS)
    print(f"\nwall time, same budget: 4 workers {four_s:.1f}s (process), 1 worker {one_s:.1f}s (in-process)")


def _read_all(procs, outs=None, first=0):
    """Drain every worker's output in a thread (a full pipe would block it); ``outs[first + k]`` at exit."""
    outs = {} if outs is None else outs
    readers = [
        threading.Thread(target=lambda k=k, p=p: outs.__setitem__(first + k, p.stdout.read()))
        for k, p in enumerate(procs)
    ]
    for r in readers:
        r.start()
    return outs, readers


def _wait_all(procs, readers, outs, timeout):
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for r in readers:
            r.join()
        pytest.fail(
            "workers hung:\n" + "\n".join(f"--- w{k}\n{outs.get(k, '')[-2500:]}" for k in range(len(procs)))
        )
    for r in readers:
        r.join()
    return codes


def _victim_mid_trial(url: str, mlflow_db: Path, name: str, worker: str, seen: dict) -> bool:
    """Whether ``worker`` runs a trial of study ``name`` whose MLflow run exists (RUNNING): killed
    any earlier, it would have no run to mark FAILED. One storage for all polls (``seen``): a new
    one per poll would open a connection each time."""
    import optuna

    try:
        if "storage" not in seen:
            seen["storage"] = optuna.storages.RDBStorage(url)
        storage = seen["storage"]
        running = [
            (s.study_name, t.number)
            for s in storage.get_all_studies()
            if s.study_name.startswith(f"{name}/")
            for t in storage.get_all_trials(s._study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == worker
        ]
    except Exception:  # noqa: BLE001 - the schema may be being created
        seen.pop("storage", None)
        return False
    if not running:
        return False
    study, number = running[0]
    arm, _, suffix = study.removeprefix(f"{name}/").partition("/")
    return mlflow_run_running(mlflow_db, arm=arm, phase=suffix or "search", trial_number=str(number))


def test_four_workers_on_postgres_survive_a_kill_9(workdir, postgres_url):  # noqa: F811
    """4 worker processes on one PostgreSQL study; one, posing as another host (so only the heartbeat
    can find its trial), is killed with SIGKILL mid-trial: its trial is failed by heartbeat and
    retried, its MLflow run FAILED, and the others complete the budget."""
    url = postgres_url
    args = [sys.executable, "-m", "ablate.cli", "worker", *SMALL, "study.name=kill", f"study.storage={url}"]
    args += ["train.steps=40", "train.eval_every=20", "heartbeat.interval_s=1", "heartbeat.grace_s=3"]
    victim = f"elsewhere-{uuid.uuid4().hex[:6]}:1"

    def start(k: int) -> subprocess.Popen:
        # the victim's steps are slow (it is killed during its first trial, once that has an MLflow
        # run); its retry, on another worker, runs at full speed. Same plan: a fault drill is not part of it
        return subprocess.Popen(
            [*args, "train.fault.step_delay_s=1"] if k == 0 else args,
            cwd=workdir,
            env=_env(**({"ABLATE_WORKER": victim} if k == 0 else {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # the victim first, alone until it is mid-trial: started together, the others could take every
    # trial before the victim (slower to start on a loaded machine) asks for one
    procs = [start(0)]
    outs, readers = _read_all(procs)
    deadline, seen = time.monotonic() + 300, {}
    while time.monotonic() < deadline and not _victim_mid_trial(
        url, workdir / "mlflow.db", "kill", victim, seen
    ):
        time.sleep(0.2)
    assert procs[0].poll() is None, "the victim finished before it could be killed"
    others = [start(k) for k in range(1, 4)]
    readers += _read_all(others, outs, first=1)[1]
    procs += others
    time.sleep(2)  # the others open the study and start their work beside the running victim
    os.kill(procs[0].pid, signal.SIGKILL)
    codes = _wait_all(procs, readers, outs, 400)
    assert codes[0] == -signal.SIGKILL and codes[1:] == [0, 0, 0], [outs[k][-2000:] for k in range(4)]
    studies = storage_studies(url)
    workers = check_shared_budget(studies, "kill", 4, 2)
    assert len(workers - {victim}) >= 2
    lost = [
        (n, t)
        for n, s in studies.items()
        for t in s.trials
        if t.user_attrs.get("worker") == victim and t.state == TrialState.FAIL
    ]
    assert len(lost) == 1, lost
    name, trial = lost[0]
    study = studies[name]
    assert trial.number in study.user_attrs["interrupted_trials"]  # its budget was given back
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # the retry is an ordinary trial: it may be pruned
    assert len(retries) == 1 and retries[0].state in finished and retries[0].params == trial.params
    assert any("lost with worker " + victim in outs[k] for k in range(1, 4))

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("kill")
    runs = client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'trial'", max_results=1000)
    statuses = Counter(r.info.status for r in runs)
    assert statuses["RUNNING"] == 0 and statuses["FAILED"] == 1, statuses
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert victim in failed.data.tags["reason"] and failed.data.tags["trial_number"] == str(trial.number)


def test_two_workers_survive_dropped_database_connections(workdir, postgres_url):  # noqa: F811
    """``pg_terminate_backend`` on every connection of the study's database, repeatedly, while two
    workers run: both finish and no completed trial is lost."""
    import psycopg

    url = postgres_url
    db = url.rsplit("/", 1)[1]
    args = [sys.executable, "-m", "ablate.cli", "worker", *SMALL, "study.name=drop", f"study.storage={url}"]
    args += ["tracking=none", "train.steps=20", "train.eval_every=10"]
    procs = [
        subprocess.Popen(
            args, cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs, readers = _read_all(procs)
    dropped = 0
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as admin:
        while any(p.poll() is None for p in procs):
            time.sleep(1.5)
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (db,),
            ).fetchall()
            dropped += sum(1 for (ok,) in rows if ok)
    for r in readers:
        r.join()
    assert [p.returncode for p in procs] == [0, 0], [outs[k][-3000:] for k in range(2)]
    assert dropped >= 2  # connections really were dropped while they worked
    check_shared_budget(storage_studies(url), "drop", 4, 2)
    # the report too: it reads the storage over the same dropped connections
    assert set(pd.read_csv(workdir / "reports/drop/summary.csv")["arm"]) == set(ARMS)
    print(f"\n{dropped} connections dropped; both workers finished the budget and wrote the report")
