"""Which arm and seed an export takes: the report's winner (or the arm asked for) and the replicate
seed with the best validation objective (never chosen on test)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ablate.components import BASE
from ablate.errors import ConfigError


@dataclass
class Choice:
    """Which arm and seed to export, why, and the numbers the model card shows."""

    study: str
    arm: str
    seed: str
    run_id: str
    components: list[str]
    quant: str
    baseline: str
    why_arm: str
    why_seed: str
    metrics: dict[str, Any]  # the chosen seed's recorded metrics
    row: dict[str, Any]  # the arm's row of the report's numbers (test EM with CI, delta, costs)
    verdict: list[str]  # the report's verdict lines about this arm
    best_config: dict[str, Any] = field(default_factory=dict)


def choose(study: str, storage: str, arm: str | None, seed: int | None, baseline: str = BASE) -> Choice:
    """Pick arm and seed from what the study recorded; a bad name or seed is a ``ConfigError``."""
    from ablate import stats
    from ablate.report.collect import collect
    from ablate.report.summary import summarise

    data = collect(study, storage, None)  # unknown study or storage: ConfigError naming it
    arms = list(data.arms.index)
    flagged = [a for a in arms if bool(data.arms.loc[a, "is_baseline"])]
    baseline = flagged[0] if flagged else baseline
    if arm is not None and arm not in arms:
        raise ConfigError("arm", arm, f"no such arm in study {study} (arms: {', '.join(arms)})")
    summary = summarise(data, baseline) if baseline in arms else None
    if arm is None:
        better = [
            a for a in (summary.primary if summary else []) if summary.comparisons[a].verdict == stats.BETTER
        ]
        if better:
            arm = max(better, key=lambda a: summary.comparisons[a].diff)
            why_arm = f"the winner: better than {baseline} in the primary family, by the most"
        else:
            arm = baseline
            why_arm = f"no arm beat the baseline {baseline} in the primary family, so the baseline"
    else:
        why_arm = f"chosen with arm={arm}"
    reps = data.studies[arm].user_attrs.get("replicates") or {}
    if not reps:
        raise ConfigError("arm", arm, f"has no replicate seeds recorded in study {study} yet")
    if seed is None:
        seed_key, why_seed = _best_seed(
            reps, data.arms.loc[arm, "objective"][0], data.arms.loc[arm, "directions"][0]
        )
    else:
        seed_key, why_seed = str(seed), f"chosen with seed={seed}"
        if seed_key not in reps:
            raise ConfigError(
                "seed", seed, f"arm {arm} has replicate seeds {', '.join(sorted(reps, key=int))}"
            )
    run_id = reps[seed_key].get("mlflow_run_id")
    if not run_id:
        raise ConfigError(
            "seed", seed_key, f"the run of arm {arm} was not recorded in MLflow (tracking=none)"
        )
    row: dict[str, Any] = {}
    lines: list[str] = []
    if summary is not None and arm in summary.numbers.index:
        row = {k: _plain_value(v) for k, v in summary.numbers.loc[arm].to_dict().items()}
        lines = [ln for ln in summary.verdict if ln.startswith((f"{arm} ", f"Baseline {arm}:", f"{arm}:"))]
    return Choice(
        study=study,
        arm=arm,
        seed=seed_key,
        run_id=run_id,
        components=list(data.arms.loc[arm, "components"]),
        quant=str(data.arms.loc[arm, "quant"]),
        baseline=baseline,
        why_arm=why_arm,
        why_seed=why_seed,
        metrics=dict(reps[seed_key]),
        row=row,
        verdict=lines,
        best_config=dict(data.arms.loc[arm, "best_config"] or {}),
    )


def _best_seed(reps: Mapping[str, Mapping[str, Any]], objective: str, direction: str) -> tuple[str, str]:
    """The seed with the best validation objective (``val_loss`` unless the study searched another);
    ties go to the lowest seed."""
    key = objective if objective.startswith("val_") else "val_loss"
    sign = -1.0 if direction == "maximize" and key == objective else 1.0
    scored = [(float(m[key]), int(s)) for s, m in reps.items() if _finite(m.get(key))]
    if not scored:
        first = min(reps, key=int)
        return first, f"no seed recorded {key}, so the lowest seed"
    value, best = min(scored, key=lambda vs: (sign * vs[0], vs[1]))
    return str(best), f"best validation {key}={value:.4f} of seeds {', '.join(sorted(reps, key=int))}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v
