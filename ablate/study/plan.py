"""A study's plan: its validated settings, arms, search spaces and each arm's trial config.

Everything here is checked from the composed config alone (no torch, no model, no storage),
so ``ablate study=NAME`` refuses a mistake before anything heavy is imported (the CLI builds
the plan first), and ``StudyRunner`` runs from the same plan.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from ablate.errors import ConfigError, flatten
from ablate.preflight import check_name
from ablate.schema import FaultConfig, Heartbeat, StudyConfig, TrackingConfig, TrialConfig
from ablate.search import Dist, parse_space
from ablate.study.config import Arm, parse_arms


@dataclass
class Plan:
    plain: dict[str, Any]  # the composed config
    spec: StudyConfig
    arms: list[Arm]  # in search order
    heartbeat: Heartbeat
    spaces: dict[str, list[Dist]]  # arm name -> its search space
    trials: dict[str, TrialConfig]  # arm name -> its trial config before any searched value
    tracking: TrackingConfig  # the study's experiment


def make_plan(plain: Mapping[str, Any], overrides: list[str]) -> Plan:
    plain = copy.deepcopy(dict(plain))
    spec = StudyConfig.from_dict(plain.get("study"))
    check_name("study.name", spec.name)  # it becomes file, storage and experiment names
    arms = parse_arms(spec, (plain.get("quant") or {}).get("method", "none"))
    for arm in arms:
        check_name("study.arms", arm.name)
    spaces = {a.name: arm_space(plain, a) for a in arms}
    _check_search_overrides(spec, arms, overrides)
    for arm in arms:
        _check_choices(plain, spec, arm, spaces[arm.name])
    tracking = TrackingConfig.from_dict({**(plain.get("tracking") or {}), "experiment": spec.name})
    return Plan(
        plain,
        spec,
        arms,
        Heartbeat.from_dict(plain.get("heartbeat")),
        spaces,
        {a.name: trial_config(plain, spec, a, {}) for a in arms},  # validates every arm's config
        tracking,
    )


def task_plans(
    plan: Plan, composed: Mapping[str, Mapping[str, Any]], overrides: list[str]
) -> dict[str, Plan]:
    """``study.tasks``: the plan of each task's study ``NAME.<task>`` from its composed config: the
    study's settings with that task's data, in the study's storage and MLflow experiment, with
    no report of its own (the study's report covers every task). Empty without tasks."""
    from ablate.storage import task_study

    out = {}
    for task in plan.spec.task_labels:
        plain = copy.deepcopy(dict(composed[task]))
        study = plain["study"] = dict(plain["study"])
        study.update(
            name=task_study(plan.spec.name, task), storage=plan.spec.storage_url, tasks=None, report=False
        )
        sub = make_plan(plain, overrides)
        sub.tracking = sub.tracking.model_copy(update={"experiment": plan.spec.name})
        out[task] = sub
    return out


def arm_space(plain: Mapping[str, Any], arm: Arm) -> list[Dist]:
    dists = parse_space(plain.get("search") or {}, arm.components, dict(arm.fixed))
    return [d for d in dists if d.name != "lora.r"] if arm.matched else dists  # its rank is derived


def _check_search_overrides(spec: StudyConfig, arms: list[Arm], overrides: list[str]) -> None:
    used = {c for a in arms for c in a.components}
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key.startswith("search.") and key.split(".")[1] not in used:
            comp = key.split(".")[1]
            raise ConfigError(key, ov.split("=", 1)[1], f"component {comp} is in no arm of study {spec.name}")


def _check_choices(plain: Mapping[str, Any], spec: StudyConfig, arm: Arm, dists: list[Dist]) -> None:
    """Every choice of a categorical search field is a valid value of that field, checked now
    (torch-free, by the schema) and named as typed, not when a trial draws it mid-study."""
    for d in dists:
        for choice in d.choices if d.kind == "categorical" else ():
            try:
                trial_config(plain, spec, arm, {d.component: {d.field: choice}})
            except ConfigError as err:
                raise ConfigError(
                    f"search.{d.name}.choices", list(d.choices), f"{choice!r}: {err.reason}"
                ) from None


def arm_defaults(plain: Mapping[str, Any], arm: Arm) -> dict[str, dict[str, Any]]:
    """The arm's component fields as composed (before any searched value), with a variant
    arm's fixed fields on top."""
    peft, fixed = plain.get("peft") or {}, arm.fixed_fields
    return {c: {**(peft.get(c) or {}), **fixed.get(c, {})} for c in arm.components}


def trial_config(
    plain: Mapping[str, Any],
    spec: StudyConfig,
    arm: Arm,
    values: Mapping[str, Mapping[str, Any]],
    *,
    seed: int | None = None,
    run: tuple[str, int | None] | None = None,
    evals: Mapping[str, Any] | None = None,
) -> TrialConfig:
    """One trial of ``arm`` with the searched ``values`` ({component: {field: value}}), validated
    once with everything that run needs, and not changed afterwards: ``run`` is ``("search",
    number)`` or ``("replicate", None)`` (the faults of ``train.fault.trials`` that apply to it),
    ``evals`` the evaluation settings of that phase."""
    plain = copy.deepcopy(dict(plain))
    plain["peft"] = {c: {**f, **(values.get(c) or {})} for c, f in arm_defaults(plain, arm).items()}
    quant = dict(plain.get("quant") or {})
    if quant.get("method") != arm.quant:  # arm@quant: that method's usual settings (QLoRA: double quant)
        quant["double_quant"] = arm.quant in ("nf4", "fp4")
    plain["quant"] = {**quant, "method": arm.quant}
    plain["train"] = dict(plain.get("train") or {})
    if spec.train_steps:
        plain["train"]["steps"] = spec.train_steps
    steps = plain["train"].get("steps", 200)
    every = plain["train"].get("eval_every", 50)
    if run is None or run[0] == "search":  # the pruner's looks; a replicate validates as train says
        plain["train"]["eval_every"] = spec.search_eval_every(steps, every)
    elif spec.train_steps:
        plain["train"]["eval_every"] = min(every, steps)
    if seed is not None:
        plain["train"]["seed"] = seed
    if run is not None:  # fault.trials names search trials only: a replicate gets none of them
        fault = FaultConfig.from_dict(plain["train"].get("fault")).for_trial(
            run[1] if run[0] == "search" else None
        )
        plain["train"]["fault"] = fault.model_dump()
    if evals:
        plain["eval"] = {**(plain.get("eval") or {}), **evals}
    return TrialConfig.from_dict(plain)


# --------------------------------------------------------------------------- the recorded plan

#: Settings that do not change what a study measures (where it is stored and shown, how many
#: processes run it, fault drills, progress bars, evaluation batch size): free to differ on resume.
NOT_PLANNED = (
    "study.storage", "study.report", "study.name", "study.description", "workers", "heartbeat",
    "tracking", "export", "train.progress", "train.fault", "train.eval_batch_size",
)  # fmt: skip
PLAN_ATTR = "plan"  # the study user attribute (on every arm's search study) that holds the plan
#: the warm-start trial of an arm with LoRA (the baseline's best LoRA values, enqueued) trains on
#: train.seed plus this, not on the search's train.seed: the same values on the same seed would
#: replay the baseline's best run, its initialisation and data order included (the replicate
#: seeds are 1..N, far below it)
WARM_START_SEED = 1_000_000
#: search r of ``study.search_repeats`` trains its search trials on train.seed + (r - 1) x this:
#: an independent search draws its initialisations and data orders afresh too
SEARCH_REPEAT_SEED = 2_000_000


def search_seed(base: int, repeat: int) -> int:
    """The training seed of search ``repeat``'s trials (the first search: ``base``, train.seed)."""
    return base + SEARCH_REPEAT_SEED * (repeat - 1)


#: where the arms' search budgets come from: compared through ``budget.<arm>`` instead
BUDGET_KEYS = ("study.n_trials", "study.trials_per_field", "study.min_trials")
#: Settings added after studies were first recorded, with the value that keeps such a study's plan:
#: absent from a recorded plan and at this value now, they are not a change of plan.
ADDED_LATER = {
    "study.interference": True,
    "study.looks": [3, 5, 8, 12, 20],
    "study.max_seeds": 20,
    "study.spending": "obf",
    "study.futility": 0.0,
    "study.search_repeats": 1,
}


def _file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def record(plan: Plan) -> dict[str, Any]:
    """What a study is, as flat ``key: value`` pairs: the composed config less ``NOT_PLANNED``, every
    arm's search space, a hash of every data file, and the ablate version. Recorded when the study
    is created and compared on every later run (:func:`check_recorded`)."""
    flat = {
        k: v
        for k, v in flatten(plan.plain).items()
        if not any(k == n or k.startswith(n + ".") for n in NOT_PLANNED)
    }
    for arm, dists in plan.spaces.items():
        flat[f"budget.{arm}"] = plan.spec.budget(len(dists))
        for d in dists:
            flat[f"space.{arm}.{d.name}"] = {
                k: v for k, v in dataclasses.asdict(d).items() if v not in (None, ())
            }
    data = plan.plain.get("data") or {}
    for key in ("path", "validation_path", "test_path"):
        if data.get(key) and os.path.isfile(data[key]):
            flat[f"data.{key}.sha256"] = _file_hash(data[key])
    flat["ablate.version"] = version("ablate")
    return json.loads(json.dumps(flat, default=str))  # the form the storage gives back


def check_recorded(recorded: Mapping[str, Any], plan: Plan) -> list[str]:
    """Refuse a run that would mix two plans in one study; return the notes of safe extensions.

    A larger search budget of an arm (``budget.<arm>``, from ``study.n_trials`` or
    ``study.trials_per_field``) extends its search (the runner then re-pins its best and
    replicates it again, :func:`extend_search`); a larger ``study.seeds`` adds seeds. The keys
    the budgets come from are compared through the budgets themselves.
    Anything else that differs is refused with one line naming each key, its recorded and its new
    value."""
    new = record(plan)
    name = plan.spec.name
    notes, bad = [], []
    recorded = dict(recorded)
    if not any(k.startswith("budget.") for k in recorded):  # recorded before per-arm budgets
        old_n = recorded.get("study.n_trials")
        recorded.update({k: old_n for k in new if k.startswith("budget.") and isinstance(old_n, int)})
    raised: dict[str, tuple[int, int]] = {}
    source = "study.n_trials" if plan.spec.n_trials is not None else "study.trials_per_field"
    typed = plan.spec.n_trials if plan.spec.n_trials is not None else plan.spec.trials_per_field
    for key in sorted(set(recorded) | set(new)):
        old, now = recorded.get(key, "<absent>"), new.get(key, "<absent>")
        if old == now or key in BUDGET_KEYS or key == "ablate.version":
            continue
        if old == "<absent>" and ADDED_LATER.get(key, old) == now:
            continue
        grows = isinstance(old, int) and isinstance(now, int) and now > old
        if key.startswith("budget.") and grows:
            raised[key[len("budget.") :]] = (old, now)
        elif key.startswith("budget."):
            bad.append(
                f"{source}={typed!r} gives {key[len('budget.') :]} {now} search trials (planned {old})"
            )
        elif key == "study.seeds" and grows:
            notes.append(f"study {name}: replicate seeds raised from {old} to {now}")
        elif (
            key == "study.search_repeats" and isinstance(now, int) and now > (1 if old == "<absent>" else old)
        ):
            notes.append(
                f"study {name}: searches per arm raised from {1 if old == '<absent>' else old} to {now}"
            )
        else:
            bad.append(f"{key}={now!r} (planned {old!r})")
    if len(set(raised.values())) == 1 and len(raised) == len(plan.spaces):
        old, now = next(iter(raised.values()))
        notes.append(f"study {name}: search budget raised from {old} to {now} trials per arm")
    else:
        notes += [
            f"study {name}: search budget of {a} raised from {o} to {n} trials"
            for a, (o, n) in raised.items()
        ]
    if any(b.startswith("search.") for b in bad):  # the spaces follow from search.*: name those only
        bad = [b for b in bad if not b.startswith("space.")]
    if bad:
        raise ConfigError(
            "study.name", name,
            f"this study was planned otherwise and its results would mix: {'; '.join(bad)}; "
            "run it as planned, or use another study.name",
        )  # fmt: skip
    return notes


def check_plan(storage: Any, plan: Plan, lock: Any, echo: Callable[[str], None]) -> None:
    """Before anything is written: a study that exists was planned; this run must be that plan
    (or a safe extension of it), or it is refused with one line naming what differs."""
    prefix = f"{plan.spec.name}/"
    mine = [s for s in storage.get_all_studies() if s.study_name.startswith(prefix)]
    recorded = next((s.user_attrs[PLAN_ATTR] for s in mine if PLAN_ATTR in s.user_attrs), None)
    if recorded is not None:
        for note in check_recorded(recorded, plan):
            echo(note)
        extend_search(storage, plan, lock)


def extend_search(storage: Any, plan: Plan, lock: Any) -> None:
    """A larger search budget than an arm was searched with (``budget.<arm>``): its pinned best (if any) is
    superseded, to be re-pinned after the extra trials and replicated again in a replication
    study of its own (``replicate_suffix``); the earlier best, its replicates and its study stay
    recorded under ``superseded``, and the report says so. Under the storage lock, with the new
    budget written in the same step, so concurrent workers supersede once."""
    from ablate.storage import replicate_suffix

    spec, prefix = plan.spec, f"{plan.spec.name}/"
    reset = (
        "best_trial",
        "best_config",
        "replicates",
        "lora_alone",
        "interference",
        "capacity",
        "matched_params",
    )
    with lock(f"{spec.name}:extend"):
        for frozen in storage.get_all_studies():
            name, ua = frozen.study_name, frozen.user_attrs
            rest = name[len(prefix) :].split("/")
            # an arm's search: NAME/<arm>, or NAME/<arm>/search<r> (study.search_repeats)
            if (
                not name.startswith(prefix)
                or len(rest) > 2
                or len(rest) == 2
                and not rest[1].startswith("search")
            ):
                continue
            arm = rest[0]
            if arm not in plan.spaces or int(ua.get("n_trials") or 0) >= spec.budget(len(plan.spaces[arm])):
                continue
            sid = storage.get_study_id_from_name(name)
            if ua.get("best_trial") is not None:
                earlier = {k: ua.get(k) for k in ("best_trial", "best_config", "n_trials", "replicates")}
                earlier["replicate_study"] = name + replicate_suffix(ua)
                storage.set_study_user_attr(sid, "superseded", [*(ua.get("superseded") or []), earlier])
                storage.set_study_user_attr(sid, "pin_generation", int(ua.get("pin_generation") or 1) + 1)
                for key in reset:
                    if ua.get(key) is not None:
                        storage.set_study_user_attr(sid, key, None)
            storage.set_study_user_attr(sid, "n_trials", spec.budget(len(plan.spaces[arm])))
