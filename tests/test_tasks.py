"""study.tasks: every arm searched and replicated on each task (its own study NAME.<task>), and each
arm's effect pooled over the tasks by a random-effects meta-analysis."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest

from ablate.stats import meta
from tests.test_cli import run_cli
from tests.test_study import storage_studies

ARGS = [
    "study=lora_vs_adapter", "model=tiny", "budget=smoke", "study.seeds=3", "study.n_trials=1",
    "study.matched=false", "study.factorial=false", "study.interference=false", "tracking.backend=none",
]  # fmt: skip


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_arm_on_every_task_each_its_own_study(workdir, capsys):
    tasks = "study.tasks=[arithmetic_easy,{sums:{config:arithmetic,task_options:{ops:'+'}}}]"
    code, out, err = run_cli([*ARGS, tasks], capsys)
    assert code == 0, err
    studies = storage_studies("sqlite:///studies/lora_vs_adapter.db")
    for task in ("arithmetic_easy", "sums"):
        for arm in ("lora", "lora+adapter"):
            assert len(studies[f"lora_vs_adapter.{task}/{arm}"].trials) == 1
            assert len(studies[f"lora_vs_adapter.{task}/{arm}"].user_attrs["replicates"]) == 3
    # each task drew its own data: the composed config of data=<config> (+ the task's own fields)
    plans = {t: studies[f"lora_vs_adapter.{t}/lora"].user_attrs["plan"] for t in ("arithmetic_easy", "sums")}
    assert plans["arithmetic_easy"]["data.task_options.digits"] == [2, 2]
    assert plans["sums"]["data.task_options.ops"] == "+" and plans["sums"]["data.task_options.digits"] == [
        2,
        4,
    ]
    assert plans["sums"]["data.n_test"] == 16  # budget=smoke applies to every task

    out_dir = workdir / "reports" / "lora_vs_adapter"
    rows = pd.read_csv(out_dir / "tasks.csv")
    for task in ("arithmetic_easy", "sums"):  # each task's full report beside the pooled one
        per = pd.read_csv(out_dir / task / "summary.csv").set_index("arm")
        got = rows[(rows["task"] == task) & (rows["arm"] == "lora+adapter")].iloc[0]
        assert got["delta_diff"] == pytest.approx(per.loc["lora+adapter", "delta_diff"], nan_ok=True)
        assert got["delta_status"] == per.loc["lora+adapter", "delta_status"]
    pooled = pd.read_csv(out_dir / "pooled.csv").set_index("arm")
    # a tiny random model scores 0 everywhere: no task can weigh in, and the report says which
    floor = rows[(rows["arm"] == "lora+adapter") & (rows["delta_status"] == "floor")]["task"]
    assert pooled.loc["lora+adapter", "tasks"] == 2 - len(floor)
    report = (out_dir / "report.md").read_text()
    assert "pooled over" in report and "figures/task_heatmap.png" in report
    assert (out_dir / "figures" / "task_heatmap.png").stat().st_size > 0
    # the report rebuilds from the storage alone, to the same numbers
    code, out, err = run_cli(["report", *ARGS, tasks], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(out_dir / "pooled.csv").set_index("arm"), pooled)
    # one bundle holds every task's study; rebuilt in an empty directory, the same pooled verdict
    code, out, err = run_cli(["bundle", *ARGS, tasks, f"out={workdir / 'b.tar.gz'}"], capsys)
    assert code == 0, err
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    code, out, err = run_cli(["report", f"bundle={workdir / 'b.tar.gz'}"], capsys)
    assert code == 0, err
    again = elsewhere / "reports" / "lora_vs_adapter"
    pd.testing.assert_frame_equal(pd.read_csv(again / "pooled.csv").set_index("arm"), pooled)
    for task in ("arithmetic_easy", "sums"):
        assert (again / task / "summary.csv").read_bytes() == (out_dir / task / "summary.csv").read_bytes()


def test_pooled_by_hand_holm_over_primary_and_tasks_without_variation_left_out():
    from ablate.report.tasks import pooled

    rows = pd.DataFrame(
        [
            # task, arm, primary, diff, se, status
            ("a", "lora+adapter", True, 0.06, 0.02, "ok"),
            ("b", "lora+adapter", True, 0.04, 0.02, "ok"),
            ("c", "lora+adapter", True, 0.05, 0.02, "ok"),
            ("d", "lora+adapter", True, 0.0, 0.0, "floor"),
            ("a", "lora+prefix", True, 0.01, 0.02, "ok"),
            ("b", "lora+prefix", True, -0.02, 0.02, "ok"),
            ("c", "lora+prefix", True, 0.00, 0.02, "ok"),
            ("d", "lora+prefix", True, 0.0, 0.0, "floor"),
        ],
        columns=["task", "arm", "primary", "delta_diff", "delta_se", "delta_status"],
    )
    got = pooled(rows, sesoi=0.02, alpha=0.05).set_index("arm")
    for arm in ("lora+adapter", "lora+prefix"):
        ok = rows[(rows["arm"] == arm) & (rows["delta_status"] == "ok")]
        want = meta.pool(ok["delta_diff"], ok["delta_se"], sesoi=0.02)
        assert got.loc[arm, "tasks"] == 3 and got.loc[arm, "left_out"] == "d"
        assert (got.loc[arm, "mean"], got.loc[arm, "lo"], got.loc[arm, "hi"]) == pytest.approx(
            (want.mean, want.lo, want.hi)
        )
    p = [
        meta.pool([0.06, 0.04, 0.05], [0.02] * 3, sesoi=0.02).p,
        meta.pool([0.01, -0.02, 0.0], [0.02] * 3, sesoi=0.02).p,
    ]
    holm = sorted(p)
    adj = {p.index(holm[0]): min(1, 2 * holm[0])}
    adj[p.index(holm[1])] = max(adj[p.index(holm[0])], min(1, holm[1]))
    assert got.loc["lora+adapter", "p_adj"] == pytest.approx(adj[0]) and got.loc[
        "lora+prefix", "p_adj"
    ] == pytest.approx(adj[1])
    assert got.loc["lora+adapter", "verdict"] == ("better" if adj[0] < 0.05 else "inconclusive")
    assert not math.isnan(got.loc["lora+adapter", "pred_lo"])  # three tasks: a prediction interval


@pytest.mark.parametrize(
    "tasks,key",
    [
        ("study.tasks=[arithmetic_easy,nosuch]", "study.tasks.nosuch='nosuch': no such data config"),
        ("study.tasks=[sql,sql]", "study.tasks=['sql', 'sql']: a task is listed twice"),
    ],
)
def test_bad_tasks_are_one_line_errors(workdir, capsys, tasks, key):
    code, out, err = run_cli([*ARGS, tasks], capsys)
    assert code == 2 and err.strip().startswith(f"error: {key}") and "Traceback" not in err, err
    assert not (workdir / "studies").exists()


def test_two_workers_share_every_task(tmp_path):
    """``workers=2`` with ``study.tasks``: both processes go through every task on the default
    SQLite storage, each (task, arm) gets its trial and seeds once, and the pooled report is
    written once, by the parent, after both are done."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from optuna.trial import TrialState

    root = Path(__file__).resolve().parents[1]
    tasks = "study.tasks=[arithmetic_easy,{sums:{config:arithmetic,task_options:{ops:'+'}}}]"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", *ARGS, tasks, "study.name=two", "workers=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert (
        proc.stdout.count("worker w") == 2
        and "2 workers done" in proc.stdout
        and "over 2 tasks" in proc.stdout
    )
    studies = storage_studies(f"sqlite:///{tmp_path}/studies/two.db")
    for task in ("arithmetic_easy", "sums"):
        for arm in ("lora", "lora+adapter"):
            search = studies[f"two.{task}/{arm}"].trials
            assert [t.state for t in search] == [TrialState.COMPLETE]
            reps = [
                t for t in studies[f"two.{task}/{arm}/replicate"].trials if t.state == TrialState.COMPLETE
            ]
            assert sorted(t.params["seed"] for t in reps) == [1, 2, 3]
    out_dir = tmp_path / "reports" / "two"
    assert (out_dir / "pooled.csv").is_file() and (out_dir / "report.md").is_file()
    assert proc.stdout.count("each arm pooled over 2 tasks") == 1


@pytest.mark.parametrize(
    "lo,hi,tasks,want",
    [
        (-1.468, 1.484, 3, "anything from -100 to +100 (t with 1 df over 3 tasks: no prediction yet)"),
        (-0.05, 0.12, 5, "[-5.0..+12.0]"),
        (-1.3, 0.4, 4, "[-100.0..+40.0]"),  # cut to what a difference of two rates can be
    ],
)
def test_prediction_interval_is_cut_to_the_possible(lo, hi, tasks, want):
    from ablate.report.tasks import prediction

    assert prediction(lo, hi, tasks) == want
