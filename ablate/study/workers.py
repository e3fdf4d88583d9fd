"""``ablate study=NAME workers=N``: N worker processes on this machine share the study's storage.

No scheduler of our own: each worker is the same ``ablate worker ...`` command that a SLURM job
array or ``docker compose --scale worker=N`` runs, and Optuna's storage hands out the trials and
seeds (see ``budget.drive``). This parent only prepares what the workers would otherwise race to
create (the storage's tables, the arm studies, the MLflow study run), starts them, forwards
SIGINT/SIGTERM, and writes the report once all are done.

Placement: with GPUs, worker i sees one device (``CUDA_VISIBLE_DEVICES``, round-robin over the
visible ones when N exceeds them); on the CPU the cores are split (``OMP_NUM_THREADS`` per
worker), so N workers do not oversubscribe the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def placements(n: int, gpus: Sequence[str], cores: int) -> list[dict[str, str]]:
    """The environment of each of ``n`` workers: one GPU each (round-robin), or a share of the cores."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(gpus[i % len(gpus)])} for i in range(n)]
    threads = str(max(1, cores // n))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(n)]


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown:
        return [d.strip() for d in shown.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_args(overrides: Sequence[str]) -> list[str]:
    """The workers' command line: the parent's overrides, one worker each, no report of their own."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("workers", "study.report")]
    return [sys.executable, "-m", "ablate.cli", "worker", *keep, "workers=1", "study.report=false"]


def _pump(stream: Any, prefix: str, out: Any) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def launch(
    args: Sequence[str], envs: Sequence[dict[str, str]], echo: Callable[[str], None] = print
) -> list[int]:
    """Run one process per environment to the end; their lines are prefixed ``[wK]``. A first
    SIGINT/SIGTERM is forwarded to every worker (each records its running trial as interrupted), a
    second too (they exit at once). Returns the exit codes; raises KeyboardInterrupt after a signal."""
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    got: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for k, extra in enumerate(envs, 1):
            env = {**os.environ, **extra}
            # own session: a Ctrl-C reaches the workers once, through forward(), not twice
            p = subprocess.Popen(
                list(args),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            procs.append(p)
            echo(f"worker w{k}: pid {p.pid}, " + ", ".join(f"{a}={b}" for a, b in extra.items()))
            t = threading.Thread(target=_pump, args=(p.stdout, f"[w{k}] ", sys.stdout), daemon=True)
            t.start()
            pumps.append(t)
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
        for t in pumps:
            t.join(timeout=5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        from ablate.signals import Interrupted

        raise Interrupted(got[0])
    return [p.returncode for p in procs]


def run_workers(runner: Any, overrides: Sequence[str], n: int) -> dict[str, Any]:
    """The study on ``n`` local workers: prepare, launch, wait, report (see the module docstring)."""
    from ablate.study import records

    storage, studies = runner.open()  # every check first; then the tables and arm studies exist once
    envs = placements(n, visible_gpus(), cpu_count())
    started = time.perf_counter()
    with records.study_run(runner.tracker, runner.spec.name, runner.lock) as srec:
        codes = launch(worker_args(overrides), envs, runner.echo)
        wall = time.perf_counter() - started
        srec.log_metrics({"workers": n, "workers_wall_s": wall})
        runner.echo(f"{n} workers done in {wall:.1f}s, exit codes {codes}")
        bad = [c for c in codes if c != 0]
        if bad:
            raise WorkersFailed(bad[0], f"{len(bad)} of {n} workers failed (exit codes {codes})")
        result: dict[str, Any] = {"studies": studies, "study_run_id": srec.run_id, "wall_s": wall}
        if runner.spec.report:
            result["report"] = runner.write_report(srec.run_id)
    return result


def run_task_workers(
    runners: Mapping[str, Any], overrides: Sequence[str], n: int
) -> dict[str, dict[str, Any]]:
    """``study.tasks`` on ``n`` local workers: every task's study prepared here, then ``n`` workers
    started once; each runs the tasks in turn (``ablate worker`` with the same tasks), taking its
    share of each (task, arm) through the storage and moving on to the next task when nothing of
    this one is left to start. Returns each task's result (its studies and the workers' wall time);
    the pooled report is the caller's."""
    from ablate.study import records

    opened = {task: runner.open() for task, runner in runners.items()}  # every check, every table
    first = next(iter(runners.values()))
    started = time.perf_counter()
    codes = launch(worker_args(overrides), placements(n, visible_gpus(), cpu_count()), first.echo)
    wall = time.perf_counter() - started
    first.echo(f"{n} workers done in {wall:.1f}s over {len(runners)} tasks, exit codes {codes}")
    bad = [c for c in codes if c != 0]
    if bad:
        raise WorkersFailed(bad[0], f"{len(bad)} of {n} workers failed (exit codes {codes})")
    results = {}
    for task, runner in runners.items():
        with records.study_run(runner.tracker, runner.spec.name, runner.lock) as srec:
            srec.log_metrics({"workers": n, "workers_wall_s": wall})
            results[task] = {"studies": opened[task][1], "study_run_id": srec.run_id, "wall_s": wall}
    return results


class WorkersFailed(RuntimeError):
    """A worker exited with an error; its own output said why. Exit with its code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)
