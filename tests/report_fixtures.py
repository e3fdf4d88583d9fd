"""A synthetic, fully recorded study for the report tests (no training stack, a few seconds).

Writes exactly what the study layer records: per-arm Optuna studies
``NAME/<arm>`` with user attributes and search trials (complete, pruned,
failed), and MLflow study > arm > trial runs with step metrics. The fixed
replicate numbers below are what the statistics tests recompute by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

PARENT = "mlflow.parentRunId"
EVAL_STEPS = (10, 20, 30, 40)

# Replicate test EM per seed (seeds 0, 1, 2): the numbers the verdict is about.
TEST_EM = {
    "lora": [0.55, 0.57, 0.56],
    "lora+adapter": [0.70, 0.72, 0.71],  # clearly better, significant after Holm with 3 seeds
    "lora+prefix": [0.56, 0.58, 0.55],  # not significantly different
    "matched-lora": [0.58, 0.59, 0.61],
}
TEST_LOSS = {
    "lora": [1.20, 1.18, 1.22],
    "lora+adapter": [1.10, 1.08, 1.05],
    "lora+prefix": [1.19, 1.17, 1.21],
    "matched-lora": [1.15, 1.14, 1.12],
}
COSTS = {  # trainable_params, step_time_s, peak_mem_mb, tokens_per_s, wall_s
    "lora": (100_000, 0.10, 1000.0, 5000.0, 60.0),
    "lora+adapter": (160_000, 0.12, 1100.0, 4200.0, 72.0),
    "lora+prefix": (120_000, 0.11, 1050.0, 4600.0, 66.0),
    "matched-lora": (162_000, 0.10, 1010.0, 4900.0, 61.0),
}
KNOCKOUT = {
    "lora+adapter": {"lora": [0.20, 0.22, 0.21], "adapter": [0.55, 0.56, 0.57]},
    "lora+prefix": {"lora": [0.10, 0.12, 0.11], "prefix": [0.56, 0.57, 0.55]},
}
COMPONENTS = {
    "lora": ["lora"],
    "lora+adapter": ["lora", "adapter"],
    "lora+prefix": ["lora", "prefix"],
    "matched-lora": ["lora"],
}
TOTAL_PARAMS = 10_000_000
N_ITEMS = 100  # test items per replicate; every TEST_EM above is a whole number of items
# LoRA held fixed: cos of LoRA's update beside X vs alone per seed (norm ratio = cos - 0.2), and of
# LoRA alone across seed pairs; LORA_ALONE is the test EM of the combination's LoRA settings alone.
INTERFERENCE = {"lora+adapter": {"0": 0.91, "1": 0.88, "2": 0.93}}
RESEED = {"lora+adapter": {"0,1": 0.50, "0,2": 0.55, "1,2": 0.45}}
LORA_ALONE = {"lora+adapter": [0.60, 0.63, 0.61]}


def item_outcomes(arm: str, seed: int, em: float | None = None) -> dict[str, list]:
    """Per-item records whose means are the arm's TEST_EM / TEST_LOSS for that seed.

    Items are ordered by a per-seed difficulty permutation shared by every arm (easy items
    are solved first), as real arms on one seed's data order roughly behave.
    """
    em = TEST_EM[arm][seed] if em is None else em
    order = np.random.default_rng(seed).permutation(N_ITEMS)
    correct = np.zeros(N_ITEMS, dtype=int)
    correct[order[: round(em * N_ITEMS)]] = 1
    noise = np.random.default_rng(100 + seed).normal(0, 0.3, N_ITEMS)
    loss = TEST_LOSS.get(arm, [1.0] * (seed + 1))[seed] + noise - noise.mean()
    return {"index": list(range(N_ITEMS)), "correct": correct.tolist(), "loss": loss.tolist()}


# Search trial states per arm (C complete, P pruned, F failed); lora+prefix has too few for importance.
STATES = {"lora": "CCPCFCC", "lora+adapter": "CPCCCFC", "lora+prefix": "CPCFC"}
TRIAL_STATE = {"C": TrialState.COMPLETE, "P": TrialState.PRUNED, "F": TrialState.FAIL}


@dataclass
class Recorded:
    """Where the fixture wrote the study, and the run ids the tests look for."""

    name: str
    storage: str
    tracking_uri: str | None
    study_run_id: str | None = None
    arm_run_ids: dict[str, str] = field(default_factory=dict)
    trial_run_ids: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (arm, phase, n) -> id
    trials: list[tuple[str, int, str]] = field(default_factory=list)  # (arm, number, state)


def _distributions(arm: str) -> dict[str, Any]:
    d: dict[str, Any] = {
        "lora.r": CategoricalDistribution([4, 8, 16]),
        "lora.lr": FloatDistribution(1e-5, 1e-2, log=True),
    }
    if "adapter" in arm:
        d["adapter.width"] = IntDistribution(4, 64, log=True)
    if "prefix" in arm:
        d["prefix.length"] = IntDistribution(4, 32)
    return d


def _params(arm: str, n: int) -> dict[str, Any]:
    p: dict[str, Any] = {"lora.r": [4, 8, 16][n % 3], "lora.lr": 10 ** (-4.5 + 0.25 * n)}
    if "adapter" in arm:
        p["adapter.width"] = [8, 16, 32, 64][n % 4]
    if "prefix" in arm:
        p["prefix.length"] = 4 + 4 * (n % 4)
    return p


def _trial_metrics(arm: str, n: int, params: dict[str, Any]) -> dict[str, float]:
    val_loss = 1.0 + 0.2 * abs(math.log10(params["lora.lr"]) + 3.5) + 0.01 * n + 0.02 * len(arm) / 10
    tp = COSTS[arm][0] * params["lora.r"] / 8 + 100 * params.get("adapter.width", 0)
    return {
        "val_loss": val_loss,
        "val_em": max(0.0, 1.2 - 0.6 * val_loss),
        "trainable_params": tp,
        "trainable_pct": 100 * tp / TOTAL_PARAMS,
        "tokens_per_s": COSTS[arm][3],
        "step_time_s": COSTS[arm][1],
        "peak_mem_mb": COSTS[arm][2],
        "wall_s": 10.0 + n,
        "steps": 40,
    }


def replicate_metrics(arm: str, seed: int) -> dict[str, Any]:
    tp, step, mem, tok, wall = COSTS[arm]
    m: dict[str, Any] = {
        "test_em": TEST_EM[arm][seed % 3],  # synthetic studies with more seeds override these
        "test_loss": TEST_LOSS[arm][seed % 3],
        "trainable_params": tp,
        "trainable_pct": 100 * tp / TOTAL_PARAMS,
        "tokens_per_s": tok,
        "step_time_s": step,
        "peak_mem_mb": mem,
        "wall_s": wall,
    }
    for comp, values in KNOCKOUT.get(arm, {}).items():
        m[f"knockout/{comp}/test_em"] = values[seed % 3]
    return m


def val_loss_curve(arm: str, seed: int) -> list[float]:
    """The replicate run's val_loss at ``EVAL_STEPS``, ending at its test loss."""
    end = TEST_LOSS[arm][seed]
    return [end + 0.3 * (len(EVAL_STEPS) - 1 - i) for i in range(len(EVAL_STEPS))]


class _Mlflow:
    """Just enough of the tracking layer: runs with parent tags, step metrics, final metrics."""

    def __init__(self, uri: str, name: str, artifacts: Path) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.exp = self.client.create_experiment(name, artifact_location=artifacts.as_uri())

    def run(self, name: str, tags: dict[str, Any], parent: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()} | ({PARENT: parent} if parent else {})
        return self.client.create_run(self.exp, run_name=name, tags=tags).info.run_id

    def metrics(self, run_id: str, series: dict[str, list[tuple[int, float]]]) -> None:
        from mlflow.entities import Metric

        ms = [Metric(k, float(v), 0, step) for k, pts in series.items() for step, v in pts]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])
        self.client.set_terminated(run_id, "FINISHED")


def _step_series(components: list[str], evals: dict[int, tuple[float, float]]) -> dict[str, list]:
    steps = range(1, EVAL_STEPS[-1] + 1)
    series: dict[str, list] = {
        "train_loss": [(s, 3.0 / math.sqrt(s)) for s in steps],
        "lr": [(s, 1e-3 * (1 - s / 50)) for s in steps],
    }
    for c in components:
        series[f"grad_norm/{c}"] = [(s, 1.0 / s) for s in steps]
    series["val_loss"] = [(s, v[0]) for s, v in evals.items()]
    series["val_em"] = [(s, v[1]) for s, v in evals.items()]
    return series


def write_study(
    root: Path,
    name: str = "demo",
    *,
    arms: tuple[str, ...] = ("lora", "lora+adapter", "lora+prefix", "matched-lora"),
    seeds: tuple[int, ...] = (0, 1, 2),
    mlflow: bool = True,
    multi_objective: bool = False,
    storage: str | None = None,
    items: dict[str, np.ndarray] | None = None,
) -> Recorded:
    """Record a finished study ``name`` under ``root``; returns where and what was written.

    ``items`` replaces an arm's per-item correctness by a given seeds x items 0/1 matrix
    (its row means become that arm's test EM), for synthetic verdict tests.
    """
    root.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{root / 'optuna.db'}"
    uri = f"sqlite:///{root / 'mlflow.db'}" if mlflow else None
    rec = Recorded(name, storage, uri)
    ml = _Mlflow(uri, name, root / "mlartifacts") if uri else None
    if ml:
        rec.study_run_id = ml.run(name, {"ablate.level": "study"})
    objective: Any = ["val_em", "trainable_params"] if multi_objective else "val_loss"
    directions = ["maximize", "minimize"] if multi_objective else ["minimize"]
    for arm in arms:
        st = optuna.create_study(study_name=f"{name}/{arm}", storage=storage, directions=directions)
        arm_run = ml.run(arm, {"ablate.level": "arm", "arm": arm}, rec.study_run_id) if ml else None
        if arm_run:
            rec.arm_run_ids[arm] = arm_run
        best: dict[str, Any] = {"lora": {"r": 32 if arm == "matched-lora" else 8, "lr": 3e-4}}
        for n, code in enumerate(STATES.get(arm, "")):
            params = _params(arm, n)
            m = _trial_metrics(arm, n, params)
            state = TRIAL_STATE[code]
            evals = {
                s: (m["val_loss"] + 0.5 * (EVAL_STEPS[-1] - s) / s, m["val_em"] * s / 40) for s in EVAL_STEPS
            }
            if state == TrialState.PRUNED:
                evals = dict(list(evals.items())[:2])
            ua: dict[str, Any] = {"metrics": m} if state == TrialState.COMPLETE else {}
            if state != TrialState.COMPLETE:
                ua["reason"] = (
                    "pruned by MedianPruner at step 20" if code == "P" else "RuntimeError: CUDA OOM"
                )
            tags = {"ablate.level": "trial", "arm": arm, "phase": "search", "trial_number": n}
            tags["state"] = {"C": "complete", "P": "pruned", "F": "failed"}[code]
            if ml:
                run_id = ml.run(f"{arm}/trial-{n}", tags | {"reason": ua.get("reason", "")}, arm_run)
                ml.metrics(run_id, _step_series(COMPONENTS[arm], evals if code != "F" else {}))
                ua["mlflow_run_id"] = run_id
                rec.trial_run_ids[(arm, "search", n)] = run_id
            values = None
            if state == TrialState.COMPLETE:
                values = [m["val_em"], m["trainable_params"]] if multi_objective else [m["val_loss"]]
            st.add_trial(
                optuna.trial.create_trial(
                    state=state,
                    values=values,
                    params=params,
                    distributions=_distributions(arm),
                    user_attrs=ua,
                    intermediate_values={s: v[0] for s, v in evals.items()} if code != "F" else {},
                )
            )
            rec.trials.append((arm, n, tags["state"]))
        # Replication runs through its own Optuna study per arm (one trial per seed), as the study layer does.
        rep_study = optuna.create_study(
            study_name=f"{name}/{arm}/replicate", storage=storage, direction="maximize"
        )
        reps = {}
        for seed in seeds:
            m = replicate_metrics(arm, seed)
            if items is not None and arm in items:
                row = np.asarray(items[arm][seed], dtype=int)
                outcomes = {
                    "index": list(range(len(row))),
                    "correct": row.tolist(),
                    "loss": (1.0 - 0.5 * row).tolist(),
                }
                m["test_em"] = float(row.mean())
                m["test_loss"] = float(np.mean(outcomes["loss"]))
            else:
                outcomes = item_outcomes(arm, seed)
            if ml:
                tags = {
                    "ablate.level": "trial",
                    "arm": arm,
                    "phase": "replicate",
                    "seed": seed,
                    "state": "complete",
                }
                run_id = ml.run(f"{arm}/seed-{seed}", tags, arm_run)
                curve = dict(zip(EVAL_STEPS, val_loss_curve(arm, seed), strict=True))
                series = _step_series(COMPONENTS[arm], {s: (v, 0.5) for s, v in curve.items()})
                series.update({k: [(EVAL_STEPS[-1], v)] for k, v in m.items()})
                ml.metrics(run_id, series)
                m["mlflow_run_id"] = run_id
                rec.trial_run_ids[(arm, "replicate", seed)] = run_id
            reps[str(seed)] = m
            rep_study.add_trial(
                optuna.trial.create_trial(
                    value=m["test_em"],
                    params={"seed": seed},
                    distributions={"seed": IntDistribution(0, max(seeds))},
                    user_attrs={"metrics": m, "items": outcomes},
                )
            )
        attrs = {
            "ablate_study": name,
            "arm": arm,
            "components": COMPONENTS[arm],
            "quant": "none",
            "is_baseline": arm == "lora",
            "objective": objective,
            "best_config": best
            | ({"adapter": {"width": 16}} if "adapter" in arm else {})
            | ({"prefix": {"length": 8}} if "prefix" in arm else {}),
            "replicates": reps,
            "n_trials": len(STATES.get(arm, "")),
        }
        if arm == "matched-lora":
            attrs["matched_to"] = "lora+adapter"
        if arm in INTERFERENCE and items is None:
            attrs["lora_alone"] = _lora_alone(storage, name, arm, seeds)
            attrs["interference"] = {
                "lora": "fixed",
                "with_x": {
                    seed: {"cos": c, "cos_mean": c, "norm_ratio": c - 0.2, "n_matrices": 8.0}
                    for seed, c in INTERFERENCE[arm].items()
                    if int(seed) in seeds
                },
                "reseed": {
                    pair: {"cos": c, "cos_mean": c, "norm_ratio": 1.0, "n_matrices": 8.0}
                    for pair, c in RESEED[arm].items()
                    if all(int(x) in seeds for x in pair.split(","))
                },
            }
        for k, v in attrs.items():
            st.set_user_attr(k, v)
        if ml and arm_run:
            ml.client.set_terminated(arm_run, "FINISHED")
    if ml and rec.study_run_id:
        ml.client.set_terminated(rec.study_run_id, "FINISHED")
    return rec


def _lora_alone(storage: str, name: str, arm: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """``NAME/<arm>/lora-alone``: the combination's LoRA settings trained alone, one trial per seed."""
    st = optuna.create_study(study_name=f"{name}/{arm}/lora-alone", storage=storage, direction="maximize")
    out = {}
    for seed in seeds:
        em = LORA_ALONE[arm][seed]
        m = {"test_em": em, "trainable_params": float(COSTS["lora"][0])}
        st.add_trial(
            optuna.trial.create_trial(
                value=em,
                params={"seed": seed},
                distributions={"seed": IntDistribution(0, max(seeds))},
                user_attrs={"metrics": m, "items": item_outcomes(arm, seed, em)},
            )
        )
        out[str(seed)] = m
    return out
