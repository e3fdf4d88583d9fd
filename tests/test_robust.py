"""Studies that survive faults, in this process on model=tiny: NaN loss, out of memory (injected with
``train.fault``), a worker lost on another host (Optuna heartbeat), signals, Hydra leaving nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate.schema import Heartbeat
from ablate.storage import Reaper, StorageLock, interrupted, open_storage
from ablate.study.budget import Done, Job, budget_left, counted, drive, enqueue_seeds, waiting
from tests.test_cli import override, run_cli
from tests.test_study import storage_studies

ROOT = Path(__file__).resolve().parents[1]
# one arm (lora), 3 trials of 6 steps, 1 seed: a study in a few seconds
ONE_ARM = [
    "study=lora_vs_adapter",
    "study.arms=[lora]",
    "model=tiny",
    "budget=smoke",
    "study.matched=false",
    "study.factorial=false",
    "study.seeds=1",
    "study.report=false",
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _mlflow_runs(workdir: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'trial'", max_results=1000)


def mlflow_run_running(mlflow_db: Path, **tags: str) -> bool:
    """Whether the trial run with these tags is RUNNING in this MLflow SQLite file (read-only:
    polled while workers write)."""
    import sqlite3

    if not mlflow_db.exists():
        return False
    match = " OR ".join("(t.key = ? AND t.value = ?)" for _ in tags)
    query = (
        "SELECT count(*) FROM runs r WHERE r.status = 'RUNNING' AND (SELECT count(*) FROM tags t"
        f" WHERE t.run_uuid = r.run_uuid AND ({match})) = ?"
    )
    values = [v for kv in tags.items() for v in kv] + [len(tags)]
    try:
        with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(query, values).fetchone()[0] > 0
    except sqlite3.Error:  # tables being created, or locked by a writer for more than 5 s
        return False


def test_train_with_a_nan_loss_stops_with_one_line_and_records_the_run_pruned(workdir, capsys):
    code, _, err = run_cli(
        ["train", "model=tiny", "budget=smoke", "peft=lora", "train.fault.nan_at_step=2"], capsys
    )
    assert code == 1 and "Traceback" not in err
    assert (
        err.strip().splitlines()[-1].startswith("training stopped: nonfinite_loss at step 2: train_loss=nan")
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("ablate-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "pruned"


def test_hf_token_never_reaches_mlflow_storage_reports_or_output(workdir, capsys, monkeypatch):
    """A study with HF_TOKEN set (as on a machine logged in to the hub): the token appears in no
    file the study wrote (mlflow.db, artifacts, studies/, reports/) and not in its output."""
    token = "hf_" + os.urandom(12).hex()
    monkeypatch.setenv("HF_TOKEN", token)
    code, out, err = run_cli(
        override(ONE_ARM, "study.name=secret", "study.n_trials=2", "study.report=true"), capsys
    )
    assert code == 0, err
    assert token not in out + err
    written = [p for p in workdir.rglob("*") if p.is_file()]
    assert any(p.name == "report.md" for p in written) and any(p.name == "mlflow.db" for p in written)
    assert [p for p in written if token.encode() in p.read_bytes()] == []


def test_nan_and_out_of_memory_in_one_study_and_the_study_goes_on(workdir, capsys):
    """A fault per search trial of one study: #0 runs out of memory once (retried with half the
    micro-batch: completes), #1 twice (fails with reason oom), #2 gets a NaN loss at step 2 (pruned,
    nonfinite_loss), #3 none. The study completes (searched, replicated)."""
    faults = "{0:{oom_at_step:2,oom_times:1},1:{oom_at_step:2,oom_times:2},2:{nan_at_step:2}}"
    args = [*ONE_ARM, "study.name=faults", "study.n_trials=4", f"train.fault.trials={faults}"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    study = storage_studies("sqlite:///studies/faults.db")["faults/lora"]
    once, twice, nan, clean = study.trials
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE]
    # smoke: micro-batch 4 x 1 accumulation -> 2 x 2, the same effective batch
    for t in (once, twice):
        assert (t.user_attrs["oom_retry"]["batch_size"], t.user_attrs["oom_retry"]["grad_accum"]) == (2, 2)
    assert once.user_attrs["metrics"]["oom_retry"] == 1 and once.user_attrs["metrics"]["steps"] == 6
    assert twice.user_attrs["reason"] == "oom"
    assert nan.user_attrs["reason"] == "nonfinite_loss" and nan.user_attrs["nonfinite_step"] == 2
    assert "nonfinite_loss at step 2" in out
    assert "oom_retry" not in clean.user_attrs and "oom_retry" not in nan.user_attrs
    assert sorted(study.user_attrs["replicates"]) == ["1"]  # the study completed: replicated, no fault

    runs = [r for r in _mlflow_runs(workdir, "faults") if r.data.tags["phase"] == "search"]
    by_trial: dict[int, list] = {}
    for r in runs:
        by_trial.setdefault(int(r.data.tags["trial_number"]), []).append(r)
    for number, retried in ((0, "FINISHED"), (1, "FAILED")):
        statuses = Counter((r.data.tags.get("oom_retry", "0"), r.info.status) for r in by_trial[number])
        # the OOM'd attempt stays FAILED in MLflow; the retry is its own run
        assert statuses == {("0", "FAILED"): 1, ("1", retried): 1}, (number, statuses)
        params = next(r for r in by_trial[number] if r.data.tags.get("oom_retry") == "1").data.params
        assert (params["train.batch_size"], params["train.grad_accum"]) == ("2", "2")
    [pruned] = by_trial[2]
    assert pruned.data.tags["state"] == "pruned" and "nonfinite_loss at step 2" in pruned.data.tags["reason"]
    assert (
        pruned.data.metrics["train_loss"] > 0
    )  # step 1 was logged; step 2's NaN never reached the optimizer
    assert [r.info.status for r in by_trial[3]] == ["FINISHED"] and len(runs) == 6


def _worker_job(n, ran, url):
    import sqlalchemy

    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    engine = sqlalchemy.create_engine(url)

    def work(trial, x):
        ran.append(trial.number)
        with engine.connect() as conn:  # this worker's trial is beating while it runs
            query = "SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"
            assert conn.execute(sqlalchemy.text(query), {"t": trial._trial_id}).scalar() == 1
        return Done(x)

    return Job(budget_left(n), lambda t: t._suggest("x", dist), work)


def test_heartbeat_fails_and_retries_a_trial_whose_worker_died_elsewhere(tmp_path):
    """A trial of a worker on another host stops beating: after grace_s the next worker fails it,
    gives its budget back and runs its retry with the same parameters; the budget completes."""
    url = f"sqlite:///{tmp_path}/hb.db"
    lost = []
    reaper = Reaper(max_retry=1, on_lost=lambda s, t: lost.append(t.number))
    storage = open_storage(url, Heartbeat(interval_s=1, grace_s=2, max_retry=1), reaper)
    study = optuna.create_study(study_name="hb/lora", storage=storage, load_if_exists=True)
    dead = study.ask()
    x = dead.suggest_float("x", 0.0, 1.0)
    dead.set_user_attr("worker", "elsewhere:1")  # another host: the pid fast path cannot see it
    storage.record_heartbeat(dead._trial_id)  # it beat once, then its worker was killed
    reaper(study)
    assert study.trials[0].state == TrialState.RUNNING  # within grace: still alive for all we know
    time.sleep(3.2)
    ran: list[int] = []
    lock = StorageLock(url)
    assert drive(study, _worker_job(3, ran, url), lock, reaper) == 3
    trials = study.trials
    assert lost == [0] and trials[0].state == TrialState.FAIL and interrupted(study) == {0}
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE and retry.params["x"] == x
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["worker"] != "elsewhere:1"
    assert len(counted(study)) == 3 and [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 3
    # replicate seeds get the same treatment: a lost seed is retried, never enqueued twice
    reps = optuna.create_study(study_name="hb/lora/replicate", storage=storage, load_if_exists=True)
    enqueue_seeds(reps, [1, 2])
    gone = reps.ask()
    gone.suggest_int("seed", 1, 2)
    gone.set_user_attr("worker", "elsewhere:2")
    storage.record_heartbeat(gone._trial_id)
    time.sleep(3.2)
    seeds = []
    job = Job(waiting, lambda t: t.suggest_int("seed", 1, 2), lambda t, s: seeds.append(s) or Done(float(s)))
    with lock(reps.study_name):
        reaper(reps)
        enqueue_seeds(reps, [1, 2])
    drive(reps, job, lock, reaper)
    assert sorted(seeds) == [1, 2]
    done = [t.params["seed"] for t in reps.trials if t.state == TrialState.COMPLETE]
    assert sorted(done) == [1, 2] and lost == [0, 0]


def test_bad_heartbeat_settings_are_refused():
    from ablate.errors import ConfigError

    for bad, key in (
        ({"interval_s": 0}, "heartbeat.interval_s"),
        ({"interval_s": 10, "grace_s": 10}, "heartbeat.grace_s"),
        ({"max_retry": -1}, "heartbeat.max_retry"),
        ({"beat": 1}, "heartbeat.beat"),
    ):
        with pytest.raises(ConfigError, match=key):
            Heartbeat.from_dict(bad)


SIGNAL_CHILD = textwrap.dedent(
    """
    import sys, time
    from ablate import signals
    try:
        with signals.installed():
            with signals.protected():
                print("ready", flush=True)
                time.sleep(float(sys.argv[1]))  # a storage write in progress
            print("after-protected", flush=True)
            time.sleep(60)
    except KeyboardInterrupt as exc:
        print("interrupted", signals.exit_code(exc), flush=True)
        sys.exit(signals.exit_code(exc))
    """
)


@pytest.mark.parametrize(
    "signum,twice", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)]
)
def test_signal_waits_for_a_protected_write_and_a_second_exits_at_once(signum, twice):
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_CHILD, "1.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signum)
    if twice:
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 1.0  # at once, not after the protected block
        assert proc.returncode == 128 + signum and "after-protected" not in out
    else:
        out, _ = proc.communicate(timeout=10)
        # the first signal waits for the protected block to end, then stops the process: 130 / 143
        assert time.monotonic() - sent > 1.0
        assert out.split() == ["interrupted", str(128 + signum)]
        assert proc.returncode == 128 + signum


def test_commands_leave_nothing_behind(workdir, capsys):
    """No outputs/, no .hydra/, no log file: a bad command writes nothing, a good one only its records."""
    code, _, _ = run_cli(["train", "peft=lora+bogus"], capsys)
    assert code == 2 and list(workdir.iterdir()) == []
    code, _, err = run_cli(["train", "model=tiny", "budget=smoke", "tracking=none"], capsys)
    assert code == 0, err
    assert list(workdir.iterdir()) == []
    code, _, err = run_cli(["train", "model=tiny", "budget=smoke"], capsys)
    assert code == 0, err
    assert {p.name for p in workdir.iterdir()} <= {"mlflow.db", "mlruns"}


def test_sigterm_mid_trial_kills_the_run_and_the_study_resumes(workdir, capsys):
    """As SLURM or docker stop sends it: exit 143, the trial interrupted, its MLflow run KILLED,
    the storage consistent; the same command then completes the budget."""
    args = [*ONE_ARM, "study.name=term", "study.n_trials=3", "train.steps=6", "train.eval_every=3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(  # slow steps (a drill, not part of the plan): the signal lands mid-trial
        [sys.executable, "-m", "ablate.cli", *args, "train.fault.step_delay_s=3"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = workdir / "studies" / "term.db"
    deadline = time.monotonic() + 120
    tags = {"arm": "lora", "phase": "search", "trial_number": "0"}
    while time.monotonic() < deadline and not mlflow_run_running(workdir / "mlflow.db", **tags):
        time.sleep(0.2)  # the first trial's run exists: inside the training loop (3 s a step)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "interrupted (exit 143)" in err
    study = storage_studies(f"sqlite:///{db}")["term/lora"]
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # nothing left RUNNING
    assert study.trials[0].user_attrs["reason"] == "interrupted" and len(counted(study)) == 0
    runs = _mlflow_runs(workdir, "term")
    assert [r.info.status for r in runs] == ["KILLED"]
    # resume (the same plan: train.steps is part of it): the whole budget, the interrupted trial's
    # budget given back
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    study = storage_studies(f"sqlite:///{db}")["term/lora"]
    assert Counter(t.state for t in study.trials) == {TrialState.FAIL: 1, TrialState.COMPLETE: 3}
    assert len(counted(study)) == 3 and sorted(study.user_attrs["replicates"]) == ["1"]


def _lose_connection_after(monkeypatch, name: str, commit: bool, times: int = 1, owner=None) -> list[int]:
    """RDBStorage.<name> (or ``owner.<name>``) fails ``times`` times as on a connection the server
    dropped: after doing its work (``commit``: the commit got through, only the answer was lost) or
    before it."""
    import sqlalchemy

    owner = owner or optuna.storages.RDBStorage
    base = getattr(owner, name)
    calls: list[int] = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            if commit:
                base(self, *args, **kwargs)
            dropped = sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit."
            ) from dropped
        return base(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    monkeypatch.setattr("ablate.storage.RETRY_WAIT_S", (0.01, 0.01))
    return calls


@pytest.mark.parametrize("commit", [False, True])
def test_a_storage_write_whose_connection_died_is_retried_once_in_effect(commit, tmp_path, monkeypatch):
    """Issue 9, item 7: a lost connection during ask or tell is retried; a write that was committed
    before the connection died is not done twice (no second trial, no UpdateFinishedTrialError)."""
    url = f"sqlite:///{tmp_path}/retry.db"
    storage = open_storage(url, Heartbeat(interval_s=1, grace_s=2))
    study = optuna.create_study(study_name="r/lora", storage=storage)
    study.enqueue_trial({"x": 0.5})
    calls = _lose_connection_after(monkeypatch, "set_trial_state_values", commit)
    waiting = study.ask()  # WAITING -> RUNNING
    assert waiting.number == 0 and waiting.suggest_float("x", 0, 1) == 0.5 and len(calls) == 2
    calls = _lose_connection_after(monkeypatch, "set_trial_state_values", commit)
    study.tell(waiting, 1.0)  # RUNNING -> COMPLETE
    assert len(calls) == 2
    calls = _lose_connection_after(monkeypatch, "_create_new_trial", commit)
    fresh = study.ask()  # committed: the retry finds the trial instead of creating another
    assert fresh.number == 1 and len(calls) == (1 if commit else 2)
    calls = _lose_connection_after(monkeypatch, "set_trial_user_attr", commit)
    fresh.set_user_attr("worker", "w")
    study.tell(fresh, 2.0)
    assert [(t.number, t.state, t.value) for t in study.trials] == [
        (0, TrialState.COMPLETE, 1.0),
        (1, TrialState.COMPLETE, 2.0),
    ]
    assert study.trials[1].user_attrs == {"worker": "w"} and len(calls) == 2
    calls = _lose_connection_after(monkeypatch, "get_all_trials", commit, times=100)
    with pytest.raises(optuna.exceptions.StorageInternalError):  # bounded: it gives up in the end
        storage.get_all_trials(study._study_id)
    assert len(calls) == 8


def test_opening_a_storage_whose_connection_dies_is_retried(tmp_path, monkeypatch):
    """The storage's constructor reads the schema version over a connection that can die too (seen
    in CI: the report opening its storage while PostgreSQL connections were being killed)."""
    from optuna.storages._rdb.storage import _VersionManager

    url = f"sqlite:///{tmp_path}/open.db"
    open_storage(url)  # the tables exist: the next open only checks the schema
    calls = _lose_connection_after(
        monkeypatch, "check_table_schema_compatibility", False, owner=_VersionManager
    )
    storage = open_storage(url)
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_a_signal_swallowed_where_python_discards_exceptions_is_raised_again():
    """A SIGTERM whose Interrupted was raised inside a garbage-collector callback (Python prints
    it and goes on: SQLAlchemy's weakref callback did this mid-study) is raised again at the next
    check (each training step, each trial), until the code that records the trial has seen it."""
    import weakref

    from ablate import signals

    with signals.installed():

        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda _ref: signals._handler(signal.SIGTERM, None))  # noqa: F841
        del thing  # the callback runs now; its Interrupted is printed and discarded
        with pytest.raises(signals.Interrupted) as raised:
            signals.check()
        assert raised.value.exit_code == 143
        with pytest.raises(signals.Interrupted):
            signals.check()  # still undelivered: every later check stops too
        signals.delivered()
        signals.check()  # handled: no second raise while the trial is recorded
