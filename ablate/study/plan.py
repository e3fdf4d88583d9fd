"""A study's plan: its validated settings, arms, search spaces and each arm's trial config.

Everything here is checked from the composed config alone (no torch, no model, no storage),
so ``ablate study=NAME`` refuses a mistake before anything heavy is imported (the CLI builds
the plan first), and ``StudyRunner`` runs from the same plan.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ablate.errors import ConfigError
from ablate.preflight import check_name
from ablate.schema import Heartbeat, StudyConfig, TrackingConfig, TrialConfig
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
) -> TrialConfig:
    """One trial of ``arm`` with the searched ``values`` ({component: {field: value}})."""
    plain = copy.deepcopy(dict(plain))
    plain["peft"] = {c: {**f, **(values.get(c) or {})} for c, f in arm_defaults(plain, arm).items()}
    quant = dict(plain.get("quant") or {})
    if quant.get("method") != arm.quant:  # arm@quant: that method's usual settings (QLoRA: double quant)
        quant["double_quant"] = arm.quant in ("nf4", "fp4")
    plain["quant"] = {**quant, "method": arm.quant}
    plain["train"] = dict(plain.get("train") or {})
    if spec.train_steps:
        plain["train"]["steps"] = spec.train_steps
        plain["train"]["eval_every"] = min(plain["train"].get("eval_every", 50), spec.train_steps)
    if seed is not None:
        plain["train"]["seed"] = seed
    return TrialConfig.from_dict(plain)
