"""The one ask -> run -> tell loop, used by the search and by replication alike.

``drive`` asks a trial while the study still has work (checked under the
storage lock, so workers never overshoot a budget), prepares it under the same
lock (sampling included), runs it outside the lock, and tells the outcome:
a value, PRUNED (``Pruned`` raised from an evaluation hook, or a non-finite loss:
reason ``nonfinite_loss`` and ``nonfinite_step``), or FAIL with a reason (``oom``
when the half-batch retry ran out of memory too). A user's mistake, Ctrl-C or
SIGTERM fails the trial as interrupted (its budget is given back on resume) and
propagates. While a trial runs its heartbeat is written; before each ask the
study's lost trials are reaped (failed and retried, see ``storage.Reaper``).
Outcomes are told inside ``signals.protected()``: a signal never cuts them in half.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ablate import signals
from ablate.errors import ConfigError
from ablate.signals import protected
from ablate.storage import INTERRUPTED, SURPLUS, WORKER, heartbeat, interrupted

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


def outcome_of(exc: Exception) -> tuple[str, dict[str, Any], str]:
    """(state, user attrs, progress text) of a trial that raised ``exc``: pruned (``Pruned``, or any
    exception with ``ablate_state = "pruned"`` such as a non-finite loss) or failed with a reason."""
    reason = getattr(exc, "reason", None)
    if getattr(exc, "ablate_state", None) == "pruned":
        attrs: dict[str, Any] = {"reason": reason or str(exc)}
        if reason and getattr(exc, "step", None) is not None:
            attrs[f"{reason.split('_')[0]}_step"] = exc.step  # nonfinite_step
        return "pruned", attrs, str(exc)
    if reason:
        return "failed", {"reason": reason, "detail": str(exc)[:1000]}, f"FAILED {exc}"
    text = f"{type(exc).__name__}: {exc}"
    return "failed", {"reason": text[:1000]}, f"FAILED {text}"


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
    # right after ask: is this trial within the work? The storage lock serialises asks only while
    # its connection lives; one dropped mid-ask lets two workers ask at once. A trial that is not
    # ours to run is failed as surplus before any work (optimistic, checked against trial numbers).
    claim: Callable[[Any, Any], bool] | None = None


def drive(study: Any, job: Job[Any], lock: Lock, reap: Callable[[Any], Any] | None = None) -> int:
    """Run trials of ``study`` until ``job.more`` says no; returns how many this process ran.
    ``reap(study)`` (under the lock, before each ask) fails and retries trials of dead workers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    ran = 0
    while True:
        signals.check()  # a signal whose first raise was swallowed: no new trial starts
        with ExitStack() as beating:
            with lock(study.study_name):
                with protected():
                    if reap is not None:
                        reap(study)
                    if not job.more(study):
                        return ran
                    if job.before_ask is not None:
                        job.before_ask(study)
                trial = None
                try:
                    with protected():  # a signal here is raised once the trial exists, so it is told below
                        trial = study.ask()
                        # beating from the ask on: a worker killed at any later point is found
                        beating.enter_context(heartbeat(study, trial))
                        trial.set_user_attr("worker", WORKER)
                        if job.claim is not None and not job.claim(study, trial):
                            trial.set_user_attr("reason", SURPLUS)
                            study.tell(trial, state=TrialState.FAIL)
                            continue
                    prepared = job.prepare(trial)
                except BaseException:
                    signals.delivered()
                    if trial is not None:
                        _interrupt(study, trial)
                    raise
            ran += 1
            t0 = time.perf_counter()
            try:
                try:
                    done = job.work(trial, prepared)
                except (ConfigError, KeyboardInterrupt):
                    signals.delivered()
                    with protected():
                        _interrupt(study, trial)
                    raise
                except Exception as exc:  # noqa: BLE001 - a pruned or crashed trial is recorded; the study goes on
                    state, attrs, text = outcome_of(exc)
                    with protected():
                        for key, value in attrs.items():
                            trial.set_user_attr(key, value)
                        study.tell(trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
                else:
                    with protected():
                        for key, value in done.attrs.items():
                            trial.set_user_attr(key, value)
                        study.tell(trial, done.value)
                    text = done.text
            except UpdateFinishedTrialError:
                # Another worker reaped this trial (no heartbeat for grace_s: a stalled or partitioned
                # worker) and enqueued its retry, which will redo it; this outcome is dropped.
                text = "LOST: reaped by another worker while running (its retry redoes it)"
        if job.report is not None:
            job.report(trial, text, time.perf_counter() - t0)


def _interrupt(study: Any, trial: Any) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        trial.set_user_attr("reason", INTERRUPTED)  # gives the budget back on resume
        study.tell(trial, state=TrialState.FAIL)
    except UpdateFinishedTrialError:  # already reaped by another worker
        pass


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


def within_budget(n_trials: int) -> Callable[[Any, Any], bool]:
    """``claim`` for a search: fewer than ``n_trials`` trials with lower numbers use the budget or
    wait to (a lost trial's retry). Trial numbers only grow, so a trial kept here is never pushed
    past the budget by a later ask, and of two asked at once past it, the later one is dropped."""

    def claim(study: Any, trial: Any) -> bool:
        lost = interrupted(study)
        ahead = [
            t for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.number not in lost
        ]
        return len(ahead) < n_trials

    return claim


def queued(study: Any, trial: Any) -> bool:
    """``claim`` for replication: the trial is an enqueued seed, not one Optuna created because
    another worker had just taken the last seed (it would draw a seed at random)."""
    return "fixed_params" in study._storage.get_trial(trial._trial_id).system_attrs


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
