"""Best configurations, the parameter-matched LoRA arm, and capacity-scaled configurations.

The rank rule is LoRA's (``components.lora.rank_for_params``); this module only
asks it. A configuration is ``{component: {field: value}}``: the trial's
searched params plus what was derived for it (the matched arm's rank), which a
trial records in its user attr ``derived``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ablate.components import CONFIGS
from ablate.components._arch import dims
from ablate.components.lora.layers import rank_for_params
from ablate.errors import ConfigError
from ablate.search import unflatten
from ablate.study.config import MATCH_TOLERANCE, MATCHED


def config_of(trial: Any) -> dict[str, dict[str, Any]]:
    """The full configuration a trial ran: its params and its derived values."""
    values = unflatten(trial.params)
    for comp, fields in (trial.user_attrs.get("derived") or {}).items():
        values.setdefault(comp, {}).update(fields)
    return values


def pin_best(study: Any, multi_objective: bool) -> Any:
    """The search trial to replicate, pinned in the storage (``best_trial``, ``best_config``) the
    first time it is chosen, so every worker and every resume replicates the same one."""
    from optuna.trial import TrialState

    if study.user_attrs.get("best_trial") is not None:  # None: superseded by a larger search
        return study.trials[study.user_attrs["best_trial"]]
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise RuntimeError(f"{study.study_name}: no complete search trial to replicate")
    if multi_objective:  # the Pareto trial with the best metric, then the fewest params
        best = max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
    else:
        best = study.best_trial
    study.set_user_attr("best_trial", best.number)
    study.set_user_attr("best_config", config_of(best))
    return best


def best_of(candidates: Mapping[str, Any], maximize: bool) -> tuple[str, Any]:
    """``(arm, trial)`` with the best first objective among pinned best trials of ``candidates``."""
    return max(candidates.items(), key=lambda kv: kv[1].values[0] if maximize else -kv[1].values[0])


def matched_rank(config: Any, fields: Mapping[str, Any], target: int, matched_to: str) -> tuple[int, int]:
    """The rank matching ``target`` params for these LoRA fields; a one-line ConfigError naming the
    arms and counts when the nearest rank is outside the tolerance."""
    rank, params = rank_for_params(dims(config), fields, target)
    if abs(params / target - 1) > MATCH_TOLERANCE:
        raise ConfigError(
            "study.matched",
            f"{MATCHED} {params:,} vs {matched_to} {target:,} params",
            f"rank {rank} with targets={fields.get('targets')} is {100 * (params / target - 1):+.1f}% "
            f"off (allowed ±{100 * MATCH_TOLERANCE:.0f}%); change search.lora.targets or set study.matched=false",
        )
    return rank, params


def check_match(
    config: Any, defaults: Mapping[str, Any], targets: list[Any], target: int, to: str
) -> list[Any]:
    """The targets choices whose nearest rank is within the tolerance of ``target``: the matched
    search draws only these. None at all: the ConfigError of the first choice (arms and counts)."""
    feasible, first = [], None
    for choice in targets:
        try:
            matched_rank(config, {**defaults, "targets": choice}, target, to)
        except ConfigError as err:
            first = first or err
        else:
            feasible.append(choice)
    if not feasible and first is not None:
        raise first
    return feasible


def scaled(
    values: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Mapping[str, Any]], k: int
) -> dict:
    """``values`` with each component's capacity multiplied by ``k`` (its params about k x), as its
    config class says (``ComponentConfig.capacity`` and ``scale_capacity``)."""
    out = {c: dict(v) for c, v in values.items()}
    for comp in defaults:
        changed = CONFIGS[comp].scale_capacity({**(defaults.get(comp) or {}), **out.get(comp, {})}, k)
        if changed:
            out.setdefault(comp, {}).update(changed)
    return out
