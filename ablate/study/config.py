"""What a study is: its validated settings (``StudyConfig``) and its arms (``parse_arms``).

No Optuna here: these are plain values checked before anything is written.
An arm is a set of components (``lora+adapter``, ``lora@nf4``), a named variant
(``{adapter_parallel: {peft: adapter, set: {adapter.mode: parallel}}}``: components
plus fixed field values, which leave that arm's search space), or a preset of
``conf/peft/`` (``mam``: a file that lists its components in ``defaults`` and fixes
their fields, the same file ``ablate train peft=mam`` composes).
Roles tell the report how each arm enters the comparison:
``baseline`` (tuned LoRA), ``combination`` (LoRA+X), ``single`` (one method alone,
e.g. X of a factorial design or LoRA on another base) and ``matched`` (LoRA with
the best combination's parameter count, searched like the others).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.components import BASE, CONFIGS, parse_arm
from ablate.errors import ConfigError, require
from ablate.schema import QUANT_METHODS, StudyConfig

MATCHED = "matched-lora"
MATCH_TOLERANCE = 0.10  # the matched arm's trainable params are within 10% of its target
_ARM = re.compile(r"^(?P<components>[a-z0-9_+]+)(@(?P<quant>\w+))?$")  # names: registry.NAME
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # an arm name is part of Optuna study names and paths
VARIANT_KEYS = ("peft", "set", "quant")
PEFT_CONF = Path(__file__).resolve().parents[2] / "conf" / "peft"


@dataclass(frozen=True)
class Arm:
    name: str
    components: tuple[str, ...]
    quant: str
    role: str = "single"  # baseline | combination | single | matched
    #: fixed field values of a variant arm, ``(("adapter.mode", "parallel"), ...)``: not searched
    fixed: tuple[tuple[str, Any], ...] = ()

    @property
    def matched(self) -> bool:
        return self.role == "matched"

    @property
    def fixed_fields(self) -> dict[str, dict[str, Any]]:
        """``{component: {field: value}}`` of the fixed values (lists as lists again)."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.fixed:
            comp, fname = key.split(".", 1)
            out.setdefault(comp, {})[fname] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def searched(self) -> bool:  # every arm is searched; kept for callers that ask
        return True


def parse_arms(cfg: StudyConfig, default_quant: str) -> list[Arm]:
    """The arms in search order: the baseline, the factorial's X-alone arms, the other listed arms,
    then matched-lora, which needs the combinations' results."""
    arms = [_parse(spec, cfg, default_quant) for spec in cfg.arms]
    names = [a.name for a in arms]
    require(len(set(names)) == len(names), "study.arms", cfg.arms, "an arm is listed twice")
    # Arms are a set: lora+adapter and adapter+lora are one arm (the same components, base and fields).
    seen: dict[tuple, str] = {}
    for a in arms:
        same = seen.setdefault((frozenset(a.components), a.quant, repr(a.fixed)), a.name)
        require(
            same == a.name,
            "study.arms",
            f"{same}, {a.name}",
            "the same arm listed twice (order of components does not matter)",
        )
    require(cfg.baseline in names, "study.baseline", cfg.baseline, f"not among the arms ({', '.join(names)})")
    base = next(a for a in arms if a.name == cfg.baseline)
    require(base.components == (BASE,), "study.baseline", cfg.baseline, f"the baseline must be {BASE} alone")
    # The baseline is searched first: every other arm with LoRA starts from its best LoRA values.
    arms = [base] + [a for a in arms if a is not base]
    names = [a.name for a in arms]
    arms = [Arm(a.name, a.components, a.quant, _role(a, cfg.baseline), a.fixed) for a in arms]
    if cfg.factorial:
        alone = []
        for a in arms:
            rest = tuple(c for c in a.components if c != BASE)
            # a variant's X alone would have to carry its fixed X fields: list it as its own arm
            if a.role == "combination" and len(rest) == 1 and not a.fixed:
                name = rest[0] + ("" if a.quant == base.quant else f"@{a.quant}")
                if name not in names and name not in [x.name for x in alone]:
                    alone.append(Arm(name, rest, a.quant, "single"))
        at = names.index(cfg.baseline) + 1
        arms = arms[:at] + alone + arms[at:]
    if cfg.matched:
        arms.append(Arm(MATCHED, (BASE,), base.quant, "matched"))
    return arms


def _parse(spec: Any, cfg: StudyConfig, default_quant: str) -> Arm:
    if isinstance(spec, Mapping):
        return _variant(spec, cfg, default_quant)
    m = _ARM.match(str(spec).replace(" ", ""))
    if not m:
        raise ConfigError(
            "study.arms",
            spec,
            "spell arms as components joined with + and an optional @quant, a preset (mam), "
            "or a named variant {NAME: {peft: ..., set: {component.field: value}}}",
        )
    quant = _quant(m["quant"] or cfg.quant or default_quant, "study.arms", spec)
    preset = load_preset(m["components"])
    if preset is not None:  # mam -> its components with the preset's fields fixed
        names, fixed = preset
        comps = parse_arm(names, key=f"{PEFT_CONF.name}/{m['components']}.yaml")
        return Arm(str(spec), comps, quant, fixed=_fixed(f"study.arms.{spec}", comps, fixed))
    return Arm(str(spec), parse_arm(m["components"], key="study.arms"), quant)


def _quant(quant: str, key: str, value: Any) -> str:
    require(quant in QUANT_METHODS, key, value, f"unknown quant (one of {', '.join(QUANT_METHODS)})")
    return quant


def _variant(spec: Mapping[str, Any], cfg: StudyConfig, default_quant: str) -> Arm:
    """``{NAME: {peft: lora+adapter, set: {adapter.mode: parallel}, quant: nf4}}`` -> a named arm."""
    require(
        len(spec) == 1, "study.arms", dict(spec), "a named arm is one mapping {NAME: {peft: ..., set: ...}}"
    )
    name, body = next(iter(spec.items()))
    name = str(name)
    key = f"study.arms.{name}"
    require(
        bool(_NAME.match(name)) and not _spells_components(name),
        "study.arms",
        name,
        "a named arm needs a name of letters, digits, _ . + - other than a component set (e.g. adapter_parallel)",
    )
    require(
        isinstance(body, Mapping), key, body, "must be a mapping with peft and set (and optionally quant)"
    )
    for k in body:
        require(k in VARIANT_KEYS, f"{key}.{k}", body[k], f"unknown key (use {', '.join(VARIANT_KEYS)})")
    require("peft" in body, f"{key}.peft", None, "missing: the arm's components, e.g. peft: lora+adapter")
    peft = body["peft"]
    preset = load_preset(peft) if isinstance(peft, str) else None
    fixed: dict[str, Any] = {}
    if preset is not None:  # a variant of a preset: {mam_long: {peft: mam, set: {prefix.length: 60}}}
        peft, fixed = preset
    comps = parse_arm(peft, key=f"{key}.peft")
    given = body.get("set") or {}
    require(isinstance(given, Mapping), f"{key}.set", given, "must be a mapping of component.field: value")
    fixed.update(_flatten(given))
    quant = _quant(body.get("quant") or cfg.quant or default_quant, f"{key}.quant", body.get("quant"))
    return Arm(name, comps, quant, fixed=_fixed(f"{key}.set", comps, fixed))


def _spells_components(name: str) -> bool:
    """``lora+adapter`` or ``mam``: a name that already means a set of components."""
    return all(p in CONFIGS for p in name.split("+")) or load_preset(name) is not None


def _flatten(given: Mapping[str, Any]) -> dict[str, Any]:
    """``{adapter.mode: x}`` or ``{adapter: {mode: x}}`` -> ``{"adapter.mode": x}``."""
    out = {}
    for k, v in given.items():
        if isinstance(v, Mapping):
            out.update({f"{k}.{f}": fv for f, fv in v.items()})
        else:
            out[str(k)] = v
    return out


def _fixed(key: str, comps: tuple[str, ...], fixed: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Validate ``component.field: value`` pairs against the arm's components (each value as the
    component itself would, so a typo is a one-line error now, not at the first trial)."""
    out = []
    for name, value in fixed.items():
        comp, _, fname = name.partition(".")
        require(
            bool(fname) and comp in comps,
            f"{key}.{name}",
            value,
            f"name a field of one of this arm's components ({', '.join(comps)}) as component.field",
        )
        try:
            CONFIGS[comp].from_dict({fname: value})
        except ConfigError as err:
            raise ConfigError(f"{key}.{name}", value, err.reason) from None
        out.append((name, tuple(value) if isinstance(value, list) else value))
    return tuple(sorted(out))


def load_preset(name: str) -> tuple[list[str], dict[str, Any]] | None:
    """A preset of ``conf/peft/`` (its ``defaults`` list the components, the rest fixes their
    fields): ``(components, {"component.field": value})``; None for a component or no such file."""
    import yaml

    path = PEFT_CONF / f"{name}.yaml"
    if not _NAME.match(name) or name in CONFIGS or not path.is_file():
        return None  # a component's own file (its defaults list pulls in its search space)
    data = yaml.safe_load(path.read_text()) or {}
    comps = [str(d) for d in data.pop("defaults", []) if d != "_self_"]
    return comps, _flatten(data)


def _role(arm: Arm, baseline: str) -> str:
    if arm.name == baseline:
        return "baseline"
    return "combination" if BASE in arm.components and len(arm.components) > 1 else "single"


def combination_arms(arms: list[Arm]) -> list[Arm]:
    return [a for a in arms if a.role == "combination"]
