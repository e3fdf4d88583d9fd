"""Search-space spec (``conf/search/<component>.yaml``) -> ``trial.suggest_*``, conditional on the arm.

Each entry names one field of one component: ``{low, high, log, step}`` for a
number (int or float, following the field's type) or ``{choices: [...]}``.
Only the components of an arm contribute parameters to that arm's trials, so a
parameter exists exactly in the arms that have its component.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ablate.components import CONFIGS
from ablate.errors import ConfigError, require


@dataclass(frozen=True)
class Dist:
    component: str
    field: str
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.component}.{self.field}"

    def grid(self) -> list[Any]:
        """Values for the grid sampler: the choices; ints by step, or by doubling from low with
        log (high included); 3 points for a float (low, (geometric) middle, high)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            if self.log:
                vals, v = [], int(self.low)
                while v <= self.high:
                    vals.append(v)
                    v *= 2
                return vals if vals[-1] == int(self.high) else [*vals, int(self.high)]
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return [self.low, mid, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def parse_space(
    search: Mapping[str, Any], components: tuple[str, ...], fixed: Mapping[str, Any] | None = None
) -> list[Dist]:
    """Validated distributions for an arm's components (others' entries are ignored), less the
    fields a variant arm fixes (``{"adapter.mode": "parallel"}``) and those a fixed field makes
    moot (a component's ``SHADOWS``: a fixed ``adapter.width_ratio`` leaves ``adapter.width`` unused)."""
    dists = []
    dropped = set(fixed or {})
    for name, value in (fixed or {}).items():
        comp, fname = name.split(".", 1)
        moot = CONFIGS[comp].SHADOWS.get(fname)
        if moot and value:
            dropped.add(f"{comp}.{moot}")
    for comp in components:
        entries = search.get(comp) or {}
        types = {n: f.default for n, f in CONFIGS[comp].model_fields.items()}
        for fname, spec in entries.items():
            key = f"search.{comp}.{fname}"
            require(fname in types, key, spec, f"{comp} has no field {fname} (fields: {', '.join(types)})")
            require(
                isinstance(spec, Mapping), key, spec, "must be {low, high[, log, step]} or {choices: [...]}"
            )
            dist = _dist(comp, fname, types[fname], dict(spec), key)
            if dist.name not in dropped:
                dists.append(dist)
    return dists


def _dist(comp: str, fname: str, default: Any, spec: dict[str, Any], key: str) -> Dist:
    extra = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if extra:
        raise ConfigError(
            f"{key}.{extra[0]}", spec[extra[0]], "unknown key (use low, high, log, step or choices)"
        )
    if "choices" in spec:
        choices = spec["choices"]
        require(
            isinstance(choices, (list, tuple)) and len(choices) > 0,
            f"{key}.choices",
            choices,
            "must be a non-empty list",
        )
        return Dist(comp, fname, "categorical", choices=tuple(choices))
    for bound in ("low", "high"):
        require(bound in spec, f"{key}.{bound}", None, "missing (give low and high, or choices)")
        value = spec[bound]
        require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"{key}.{bound}",
            value,
            "must be a number",
        )
    low, high = spec["low"], spec["high"]
    if low > high:
        raise ConfigError(f"{key}.low", low, f"greater than {key}.high={high}")
    log = bool(spec.get("log", False))
    if log:
        require(low > 0, f"{key}.low", low, "must be > 0 with log: true")
    is_int = isinstance(default, int) and not isinstance(default, bool)
    if is_int:
        require(
            float(low).is_integer() and float(high).is_integer(),
            f"{key}.low",
            low,
            f"{fname} is an integer field",
        )
    step = spec.get("step")
    if step is not None:
        require(step > 0, f"{key}.step", step, "must be > 0")
        require(not log, f"{key}.step", step, "cannot be combined with log: true")
    return Dist(comp, fname, "int" if is_int else "float", float(low), float(high), log, step)


def sample(trial: Any, dists: list[Dist]) -> dict[str, dict[str, Any]]:
    """``{component: {field: value}}`` for one trial."""
    out: dict[str, dict[str, Any]] = {}
    for d in dists:
        out.setdefault(d.component, {})[d.field] = d.suggest(trial)
    return out


def unflatten(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Optuna's ``{"lora.r": 8}`` -> ``{"lora": {"r": 8}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        comp, fname = name.split(".", 1)
        out.setdefault(comp, {})[fname] = value
    return out
