"""The Optuna objects of an arm: its study (sampler, pruner, the attrs the report reads), and the
per-trial seed that keeps draws distinct.

Every ask re-seeds the arm's sampler from ``(sampler_seed, study name, trials so far)``.
Asks are serialised by the storage lock, so no two asks of one study (from any
worker, or from a resumed process) see the same count: their random start-up
draws differ, and the study stays reproducible for a given order of asks. TPE
also runs with ``constant_liar``, Optuna's mechanism for parallel workers, so a
running trial pushes the others' draws away from it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ablate.schema import OBJECTIVES, StudyConfig
from ablate.search import Dist
from ablate.storage import search_suffix
from ablate.study.config import Arm


def trial_seed(base: int, study_name: str, n: int, worker: str = "") -> int:
    key = f"{base}:{study_name}:{n}:{worker}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def make_sampler(spec: StudyConfig, dists: list[Dist], seed: int, budget: int) -> Any:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid() for d in dists}, seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=spec.startup_trials(budget), constant_liar=True
    )


#: ``study.pruner=percentile``: a search trial is stopped at 1/3 or 2/3 of its steps only when its
#: validation objective is worse than this percentile of the completed trials' at that step (Optuna
#: compares with completed trials only). Chosen on ``python -m benchmarks pruning`` (README, "Does pruning cost a component its
#: winner?"): the median kept every tiny winner but cut LoRA+prompt's on SmolLM2; this kept both.
KEEP_PERCENTILE = 75.0


def make_pruner(spec: StudyConfig, steps: int, every: int) -> Any:
    import optuna

    if spec.pruner == "percentile" and spec.sampler != "mo":
        return optuna.pruners.PercentilePruner(KEEP_PERCENTILE, n_startup_trials=2, n_warmup_steps=every)
    if spec.pruner == "median" and spec.sampler != "mo":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=every)
    if spec.pruner == "hyperband" and spec.sampler != "mo":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps)
    return optuna.pruners.NopPruner()


def directions(spec: StudyConfig) -> list[str]:
    if spec.sampler == "mo":
        return ["maximize", "minimize"]  # task metric up, trainable params down
    return [OBJECTIVES[spec.objective]]


def reseeder(spec: StudyConfig, dists: list[Dist], worker: str = "") -> Any:
    """``before_ask(study)``: a sampler seeded for the next trial of ``study``. Give ``worker``
    when asks are not serialised across workers (no storage lock)."""

    def before_ask(study: Any) -> None:
        n = len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(
            spec, dists, trial_seed(spec.sampler_seed, study.study_name, n, worker), spec.budget(len(dists))
        )

    return before_ask


def arm_study(
    storage: Any, spec: StudyConfig, arm: Arm, dists: list[Dist], steps: int, every: int, suffix: str = "",
    repeat: int = 1,
) -> Any:  # fmt: skip
    """``NAME/<arm>`` (the search, with the arm's attrs) or ``NAME/<arm><suffix>`` (seeds to replicate);
    search ``repeat`` > 1 of ``study.search_repeats``: ``NAME/<arm>/search<repeat>`` and its replications."""
    import optuna

    name = f"{spec.name}/{arm.name}{search_suffix(repeat)}"
    if suffix:  # replication: trials are enqueued seeds, nothing is sampled or pruned
        reps = optuna.create_study(
            study_name=f"{name}{suffix}",
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=optuna.pruners.NopPruner(),
        )
        _name_metrics(reps, ["test_em"])
        return reps
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        directions=directions(spec),
        sampler=make_sampler(spec, dists, spec.sampler_seed, spec.budget(len(dists))),
        pruner=make_pruner(spec, steps, every),
    )
    attrs = {
        "ablate_study": spec.name,
        "arm": arm.name,
        "components": list(arm.components),
        "fixed": arm.fixed_fields,  # a variant arm's fixed fields: part of its configuration, never searched
        "quant": arm.quant,
        "is_baseline": arm.role == "baseline",
        "role": arm.role,
        "factorial": spec.factorial,
        "objective": ["val_em", "trainable_params"] if spec.sampler == "mo" else spec.objective,
        "n_trials": spec.budget(len(dists)),
        "startup_trials": spec.startup_trials(spec.budget(len(dists))),
        "sesoi": spec.sesoi,  # fixed with the design, before any data: the report's equivalence margin
    }
    if repeat > 1:
        attrs["search_repeat"] = repeat
    for k, v in attrs.items():
        if study.user_attrs.get(k) != v:
            study.set_user_attr(k, v)
    _name_metrics(study, attrs["objective"] if isinstance(attrs["objective"], list) else [attrs["objective"]])
    return study


def _name_metrics(study: Any, names: list[str]) -> None:
    """What optuna-dashboard shows for the values ("val_loss", not "Objective 0"); written once."""
    import warnings

    if study.metric_names != names:
        with warnings.catch_warnings():  # Optuna marks set_metric_names experimental
            warnings.simplefilter("ignore")
            study.set_metric_names(names)
