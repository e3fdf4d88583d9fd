"""``study.seeds=auto``: the looks of a group-sequential replication, each decided once.

The design (``ablate.stats.sequential``) is fixed by the plan before any data: the looks
(``study.looks`` up to ``study.max_seeds``), the spending shape, the primary family (each LoRA+X
arm, LoRA on another base, and each named variant, against the baseline: the report's family)
and its size ``m``. After every arm open at a look has its seeds, the first worker to get here
takes the storage lock, reads the per-item test scores the replicate trials stored, tests each
open comparison at that look's boundary and records the steps on the baseline's study
(``sequential``); the others find them recorded. A resumed study reads them back, so it takes
up at the right look and never re-decides one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ablate.components import BASE
from ablate.schema import StudyConfig
from ablate.stats import sequential as Q
from ablate.study.config import Arm

ATTR = "sequential"  # the baseline's study user attribute: {"design": {...}, "looks": [...]}
ALPHA = 0.05  # the report's alpha: the family-wise rate the design spends


def primary_arms(arms: list[Arm], baseline: str) -> list[str]:
    """The primary family (``ablate.report.numbers.primary_family`` on what was recorded): every arm
    but the baseline and matched-lora with LoRA in it, and every named variant."""
    return [
        a.name for a in arms if a.name != baseline and not a.matched and (BASE in a.components or a.fixed)
    ]


def design_for(spec: StudyConfig, arms: list[Arm]) -> Q.Design:
    m = max(1, len(primary_arms(arms, spec.baseline)))
    return Q.Design(
        looks=tuple(spec.look_seeds), alpha=ALPHA, m=m, sesoi=spec.sesoi, spending=spec.spending,
        futility=spec.futility,
    )  # fmt: skip


def recorded(baseline_study: Any) -> list[dict[str, Any]]:
    return list((baseline_study.user_attrs.get(ATTR) or {}).get("looks") or [])


def open_at(looks: list[dict[str, Any]], primary: list[str], k: int) -> list[str]:
    """The primary arms still open when look ``k`` is taken (all of them at the first)."""
    still = list(primary)
    for look in looks[:k]:
        still = [a for a in still if (look["steps"].get(a) or {}).get("reason", Q.OPEN) == Q.OPEN]
    return still


def decide(
    spec: StudyConfig,
    design: Q.Design,
    k: int,
    arms_open: list[str],
    studies: Mapping[str, Any],
    storage: Any,
    lock: Callable[[str], Any],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Look ``k``: test every comparison in ``arms_open`` at its boundary, once across workers."""
    from ablate.report.numbers import compare_arms

    base = studies[spec.baseline]
    with lock(f"{spec.name}:look"):
        state = dict(base.user_attrs.get(ATTR) or {"design": design.describe(), "looks": []})
        if len(state["looks"]) > k:
            return state["looks"][k]
        n = design.looks[k]
        data = _data_up_to(spec.name, studies, storage, n)
        steps = {}
        for arm in arms_open:
            c = compare_arms(data, arm, spec.baseline, "em", spec.sesoi, design.alpha)
            step = design.step(k, c)
            steps[arm] = {
                "reason": step.reason,
                "verdict": step.verdict,
                "seeds": c.n_seeds,
                "diff": c.diff,
                "p": c.p,
                "tost_p": c.tost_p,
                "boundary_p": design.nominal[k],
            }
        look = {"look": k, "seeds": n, "steps": steps}
        state["looks"] = [*state["looks"], look]
        base.set_user_attr(ATTR, _jsonable(state))
    for arm, s in steps.items():
        echo(
            f"[look {k + 1}/{len(design.looks)}: {n} seeds] {arm} vs {spec.baseline}: {s['reason']}"
            f" ({s['verdict']}; p={s['p']:.3g} against the look's boundary {s['boundary_p']:.2g})"
        )
    return look


def _data_up_to(study: str, studies: Mapping[str, Any], storage: Any, n: int) -> Any:
    """What the report would read, from this worker's open storage, less seeds above ``n``."""
    from ablate.report import collect as C

    data = C.StudyData(
        name=study,
        arms=C.arms_frame(dict(studies)),
        trials=C.trials_frame(dict(studies)),
        replicates=C.replicates_frame(dict(studies)),
        studies=dict(studies),
    )
    data.items = C.items_frame(study, storage, list(studies), studies)
    data.failures = C.failures_frame(study, storage, list(studies), studies)
    for name in ("items", "failures", "replicates"):
        frame = getattr(data, name)
        if len(frame):
            setattr(data, name, frame[frame["seed"].astype(int) <= n])
    return data


def _jsonable(value: Any) -> Any:
    """NaN (an undecidable comparison's p) as None: the storage keeps JSON."""
    import math

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
