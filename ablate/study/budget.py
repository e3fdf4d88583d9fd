"""The one ask -> run -> tell loop, used by the search and by replication alike.

``drive`` asks a trial while the study still has work (checked under the
storage lock, so workers never overshoot a budget), prepares it under the same
lock (sampling included), runs it outside the lock, and tells the outcome:
a value, PRUNED (``Pruned`` raised from an evaluation hook), or FAIL with a
reason. A user's mistake or Ctrl-C fails the trial as interrupted (its budget is
given back on resume) and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ablate.errors import ConfigError
from ablate.study.storage import INTERRUPTED, WORKER, interrupted

T = TypeVar("T")
Lock = Callable[[str], Any]


class Pruned(Exception):
    """Raised from the evaluation hook to stop a trial; recorded as pruned, not failed."""

    ablate_state = "pruned"


def prune_hook(trial: Any, objective: str, last_step: int) -> Callable[[int, dict[str, float]], None]:
    """A search trial's evaluation hook: report ``objective``; stop the trial (``Pruned``) only
    before its last step. At the last evaluation training is over, so pruning would only throw
    away a complete result (and a trial of the arm's budget)."""

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        value = metrics[objective]
        trial.report(value, step)
        if step < last_step and trial.should_prune():
            raise Pruned(f"pruned at step {step}: {objective}={value:.4f}")

    return on_eval


@dataclass
class Done:
    """A finished trial: the value(s) to tell, user attrs to record first, a progress text."""

    value: float | list[float]
    attrs: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass
class Job(Generic[T]):
    """How to run the trials of one study through ``drive``."""

    more: Callable[[Any], bool]  # under the lock: is there work left to ask for?
    prepare: Callable[[Any], T]  # under the lock, right after ask: sample the trial's config
    work: Callable[[Any, T], Done]  # outside the lock: run it
    before_ask: Callable[[Any], None] | None = None  # under the lock: e.g. re-seed the sampler
    report: Callable[[Any, str, float], None] | None = None  # progress line: (trial, text, seconds)


def drive(study: Any, job: Job[Any], lock: Lock) -> int:
    """Run trials of ``study`` until ``job.more`` says no; returns how many this process ran."""
    from optuna.trial import TrialState

    ran = 0
    while True:
        with lock(study.study_name):
            if not job.more(study):
                return ran
            if job.before_ask is not None:
                job.before_ask(study)
            trial = study.ask()
            trial.set_user_attr("worker", WORKER)
            try:
                prepared = job.prepare(trial)
            except BaseException:
                _interrupt(study, trial)
                raise
        ran += 1
        t0 = time.perf_counter()
        try:
            done = job.work(trial, prepared)
        except Pruned as exc:
            trial.set_user_attr("reason", str(exc))
            study.tell(trial, state=TrialState.PRUNED)
            text = str(exc)
        except (ConfigError, KeyboardInterrupt):
            _interrupt(study, trial)
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed trial is recorded and the study goes on
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:1000])
            study.tell(trial, state=TrialState.FAIL)
            text = f"FAILED {type(exc).__name__}: {exc}"
        else:
            for key, value in done.attrs.items():
                trial.set_user_attr(key, value)
            study.tell(trial, done.value)
            text = done.text
        if job.report is not None:
            job.report(trial, text, time.perf_counter() - t0)


def _interrupt(study: Any, trial: Any) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("reason", INTERRUPTED)  # gives the budget back on resume
    study.tell(trial, state=TrialState.FAIL)


def counted(study: Any) -> list[Any]:
    """Trials that use the budget: finished ones (but interrupted) and those running now."""
    from optuna.trial import TrialState

    lost = interrupted(study)
    return [
        t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING and t.number not in lost
    ]


def budget_left(n_trials: int) -> Callable[[Any], bool]:
    """``more`` for a search: fewer than ``n_trials`` counted, and a grid not yet exhausted."""

    def more(study: Any) -> bool:
        import optuna

        if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
            return False
        return len(counted(study)) < n_trials

    return more


def waiting(study: Any) -> bool:
    """``more`` for replication: an enqueued seed is waiting."""
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def enqueue_seeds(study: Any, seeds: Iterable[int]) -> None:
    """Enqueue each seed that is neither done nor taken (call under the lock): a seed whose run
    failed or was interrupted is tried again on resume, and no seed is ever handed out twice."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    taken = {
        t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed"))
        for t in study.get_trials(deepcopy=False, states=live)
    }
    for seed in seeds:
        if seed not in taken:
            study.enqueue_trial({"seed": seed})


@dataclass
class Progress:
    total: int
    done: int = 0
    seconds: float = 0.0

    def line(self, arm: str, phase: str, index: int, of: int, outcome: str, took: float) -> str:
        self.done += 1
        self.seconds += took
        left = max(self.total - self.done, 0)
        eta = left * (self.seconds / self.done)
        return (
            f"[{arm}] {phase} {index}/{of}: {outcome} ({took:.0f}s)  "
            f"overall {self.done}/{self.total}, ETA {eta / 60:.1f} min"
        )
