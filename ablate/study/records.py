"""What a study writes to MLflow: the study run, one run per arm (trial runs hang below them,
opened by ``run_trial``), summary metrics, and tags a resumed study finds its runs by."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from ablate.study.config import Arm
from ablate.study.storage import no_lock


def find_run(tracker: Any, tags: Mapping[str, str]) -> str | None:
    """Reuse the MLflow run that a previous invocation (or another worker) of this study created."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = tracker.find_runs(query)
    return runs[0].info.run_id if runs else None


@contextmanager
def _shared_run(
    tracker: Any, name: str, tags: Mapping[str, str], key: Mapping[str, str], lock: Any, **kw: Any
) -> Iterator[Any]:
    """Find or create the run under the storage lock: workers starting together share one run
    instead of each creating its own."""
    with ExitStack() as stack:
        with lock(f"mlflow:{'/'.join(key.values())}"):
            rec = stack.enter_context(tracker.run(name, tags=tags, run_id=find_run(tracker, key), **kw))
        yield rec


def study_run(tracker: Any, name: str, lock: Callable[[str], Any] = no_lock) -> Any:
    tags = {"ablate.level": "study", "study": name}
    return _shared_run(tracker, name, tags, tags, lock)


def arm_run(tracker: Any, parent: Any, study: str, arm: Arm, lock: Callable[[str], Any] = no_lock) -> Any:
    tags = {
        "ablate.level": "arm",
        "study": study,
        "arm": arm.name,
        "role": arm.role,
        "components": ",".join(arm.components),
        "quant": arm.quant,
    }
    key = {"ablate.level": "arm", "study": study, "arm": arm.name}
    return _shared_run(tracker, arm.name, tags, key, lock, parent=parent)


def fail_lost_run(tracker: Any, study: str, optuna_study: str, trial: Any) -> str | None:
    """The MLflow run of a trial whose worker died (reaped by heartbeat or pid): FAILED, with the reason.
    Found by its tags, since the dead worker never got to record the run id in the storage."""
    arm, _, suffix = optuna_study.removeprefix(f"{study}/").partition("/")
    phase = suffix or "search"
    query = {
        "ablate.level": "trial",
        "study": study,
        "arm": arm,
        "phase": phase,
        "trial_number": str(trial.number),
    }
    found = [
        r
        for r in tracker.find_runs(" and ".join(f"tags.`{k}` = '{v}'" for k, v in query.items()))
        if r.info.status == "RUNNING"
    ]
    worker = trial.user_attrs.get("worker", "?")
    for run in found:

        def fail(run_id: str = run.info.run_id) -> None:
            tracker.client.set_tag(run_id, "state", "failed")
            tracker.client.set_tag(run_id, "reason", f"worker lost: {worker} stopped writing heartbeats")
            tracker.client.set_terminated(run_id, "FAILED")

        tracker.guarded(fail)  # MLflow down: the run stays RUNNING there; the storage has the outcome
    return found[0].info.run_id if found else None


def trial_tags(study: str, arm: Arm, phase: str, seed: int, number: int) -> dict[str, Any]:
    return {
        "ablate.level": "trial",
        "study": study,
        "arm": arm.name,
        "phase": phase,
        "seed": seed,
        "trial_number": number,
    }


def summary(study: Any) -> dict[str, float]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    out = {
        "trials_complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(study.directions) == 1:
        out["best_value"] = study.best_value
    reps = study.user_attrs.get("replicates") or {}
    if reps:
        ems = [r["test_em"] for r in reps.values()]
        out["replicate_test_em_mean"] = sum(ems) / len(ems)
    return out


def jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def record_interference(
    tracking_uri: str, arm_study: Any, baseline: Any, arec: Any
) -> dict[str, dict[str, float] | None]:
    """LoRA's similarity alone vs inside the combination, per seed replicated in both (MLflow only):
    ``interference`` user attr on the arm's study, ``interference/*`` means on its MLflow run."""
    try:
        from ablate.interference import lora_similarity
    except ImportError:
        return {}
    from ablate.tracking import unreachable

    def similarity(seed: str) -> dict[str, float] | None:
        try:
            return lora_similarity(tracking_uri, alone[seed]["mlflow_run_id"], mine[seed]["mlflow_run_id"])
        except (
            Exception
        ) as exc:  # MLflow down, or its runs gone: this seed goes unmeasured, the study goes on
            why = unreachable(exc)
            if why is None and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                why = "its replicate runs are not in this tracking store (deleted, or another store)"
            elif why is None:
                raise
            else:
                why = f"mlflow unreachable ({why})"
            note = f"[{arm_study.study_name}] interference of seed {seed} not measured: {why}"
            print(note, file=sys.stderr, flush=True)
            return None

    mine = arm_study.user_attrs.get("replicates") or {}
    alone = baseline.user_attrs.get("replicates") or {}
    result = {
        seed: similarity(seed)
        for seed in sorted(set(mine) & set(alone))
        if alone[seed].get("mlflow_run_id") and mine[seed].get("mlflow_run_id")
    }
    arm_study.set_user_attr("interference", result)
    for key in ("cos", "norm_ratio"):
        values = [r[key] for r in result.values() if r and r.get(key) is not None]
        if values:
            arec.log_metrics({f"interference/{key}": sum(values) / len(values)})
    return result
