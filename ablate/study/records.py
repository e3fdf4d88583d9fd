"""What a study writes to MLflow: the study run, one run per arm (trial runs hang below them,
opened by ``run_trial``), summary metrics, and tags a resumed study finds its runs by."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from ablate.storage import no_lock
from ablate.study.config import Arm


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


def record_interference(tracking_uri: str, arm_study: Any, arec: Any) -> dict[str, Any]:
    """LoRA's update beside X vs the same LoRA settings trained alone (``with_x``, per seed), and
    LoRA alone against itself on another seed (``reseed``, per pair "s,t"): the ``interference``
    user attr on the arm's study, its means as ``interference/*`` on the arm's MLflow run.
    MLflow only (the weights are its artifacts); a run it cannot give back leaves its figures out."""
    try:
        from mlflow import MlflowClient

        from ablate.interference import run_lora, update_similarity
    except ImportError:
        return {}
    from ablate.stats.similarity import interference
    from ablate.tracking import unreachable

    mine = arm_study.user_attrs.get("replicates") or {}
    alone = arm_study.user_attrs.get("lora_alone") or {}
    client = MlflowClient(tracking_uri)
    loras: dict[str, Any] = {}

    def lora(kind: str, seed: str, rec: dict[str, Any]) -> Any:
        run_id = rec.get("mlflow_run_id")
        if (kind, seed) not in loras:
            try:
                loras[kind, seed] = run_lora(client, run_id) if run_id else None
            except Exception as exc:  # MLflow down, or its runs gone: this seed goes unmeasured
                why = unreachable(exc)
                if why is None and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                    why = "its run is not in this tracking store (deleted, or another store)"
                elif why is None:
                    raise
                else:
                    why = f"mlflow unreachable ({why})"
                note = f"[{arm_study.study_name}] interference of {kind} seed {seed} not measured: {why}"
                print(note, file=sys.stderr, flush=True)
                loras[kind, seed] = None
        return loras[kind, seed]

    def similarity(a: Any, b: Any) -> dict[str, float] | None:
        return None if a is None or b is None else update_similarity(a[0], a[1], b[0], b[1])

    seeds = sorted(set(alone), key=int)
    with_x = {
        s: similarity(lora("lora-alone", s, alone[s]), lora("with X", s, mine[s])) for s in seeds if s in mine
    }
    reseed = {
        f"{s},{t}": similarity(lora("lora-alone", s, alone[s]), lora("lora-alone", t, alone[t]))
        for i, s in enumerate(seeds)
        for t in seeds[i + 1 :]
    }
    result = {"lora": "fixed", "with_x": with_x, "reseed": reseed}
    arm_study.set_user_attr("interference", result)
    it = interference(
        {s: r["cos"] for s, r in with_x.items() if r},
        {tuple(k.split(",")): r["cos"] for k, r in reseed.items() if r},
    )
    ratios = [r["norm_ratio"] for r in with_x.values() if r]
    logged = {"interference/cos": it.cos_with_x, "interference/reseed_cos": it.cos_reseed}
    logged |= {"interference/diff_z": it.diff}
    logged |= {"interference/norm_ratio": sum(ratios) / len(ratios)} if ratios else {}
    arec.log_metrics({k: v for k, v in logged.items() if v == v})  # nan: nothing measured
    return result
