"""Read what a study recorded (Optuna storage, MLflow) into plain pandas tables.

The report never recomputes or re-runs anything: every number it prints comes
from these frames, which come from the storage and the tracking server alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from ablate.errors import ConfigError, redact

ITEM_COLUMNS = ["arm", "seed", "item", "correct", "loss"]
FAILURE_COLUMNS = ["arm", "seed", "state", "reason"]
CAPACITY_COLUMNS = ["arm", "level", "seed", "test_em", "trainable_params"]
INTERFERENCE_COLUMNS = ["arm", "kind", "seed", "seed2", "cos", "cos_mean", "norm_ratio", "n_matrices"]
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


@dataclass
class StudyData:
    """Everything the report reads, as frames (one row per arm / trial / replicate / curve point)."""

    name: str
    arms: pd.DataFrame  # index arm: components, quant, is_baseline, matched_to, objective, best_config, ...
    trials: pd.DataFrame  # arm, number, state, value(s), params.*, metrics.*, reason, mlflow_run_id
    replicates: pd.DataFrame  # arm, seed, test_em, test_loss, ..., knockout/<c>/test_em
    studies: dict[str, optuna.Study] = field(default_factory=dict)
    curves: pd.DataFrame | None = None  # arm, seed, run_id, step, val_loss (None: no tracking URI)
    curves_note: str = ""
    #: per test item of every replicate: arm, seed, item, correct, loss (+ zero_shot_correct/_loss if recorded)
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITEM_COLUMNS))
    grad_norms: pd.DataFrame | None = None  # arm, seed, component, step, grad_norm (replicate runs)
    interference: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=INTERFERENCE_COLUMNS))
    #: replicate seeds that diverged, went non-finite or failed and never completed: arm, seed, state, reason
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))
    #: study.capacity_levels: arm, level, seed, test_em, trainable_params (level 1 = the replicates)
    capacity: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CAPACITY_COLUMNS))
    #: study.search_repeats > 1 was recorded: a seed names its search, and comparisons have a row per search
    searches: bool = False
    #: what an item's score is, in the report's words (results made elsewhere name their metric)
    metric: str = "exact match on the test split"


def open_storage(url: str, study: str) -> Any:
    """One storage object for everything the report reads: the study's retrying RDB storage
    (``ablate.storage``), whose calls survive a dropped database connection. A URL handed to
    each ``optuna.load_study`` would open a fresh, non-retrying storage (and engine) per study."""
    from ablate.storage import open_storage as open_rdb

    # Optuna would silently create (or fill an empty file with) its schema: a report only reads.
    if url.startswith("sqlite:///"):
        from ablate.preflight import check_sqlite_file

        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise ConfigError(
                "study.storage", redact(url), f"no such SQLite file; cannot read study {study!r}"
            )
        check_sqlite_file("study.storage", redact(url), str(path))
        if path.stat().st_size == 0:
            raise ConfigError("study.storage", redact(url), f"{path} is empty: not a study database")
    return open_rdb(url)


def load_studies(study: str, storage: Any) -> dict[str, optuna.Study]:
    """The per-arm Optuna studies ``<study>/<arm>`` of ``storage`` (``open_storage``), keyed by arm,
    in storage order."""
    names = optuna.study.get_all_study_names(storage=storage)
    prefix = f"{study}/"
    # Arm names never contain "/": ``NAME/<arm>/replicate`` are the replication studies, not arms.
    arms = {n[len(prefix) :]: n for n in names if n.startswith(prefix) and "/" not in n[len(prefix) :]}
    if not arms:
        known = sorted({n.split("/", 1)[0] for n in names})
        url = redact(getattr(storage, "url", "?"))
        raise ConfigError("study", study, f"not in storage {url} (studies there: {known or 'none'})")
    return {arm: optuna.load_study(study_name=name, storage=storage) for arm, name in arms.items()}


def _objective_names(st: optuna.Study) -> list[str]:
    obj = st.user_attrs.get("objective", "val_loss")
    names = [obj] if isinstance(obj, str) else list(obj)
    n = len(st.directions)
    return names[:n] + [f"value_{i}" for i in range(len(names), n)]


def arms_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    rows = []
    for arm, st in studies.items():
        ua = st.user_attrs
        rows.append(
            {
                "arm": ua.get("arm", arm),
                "components": list(ua.get("components", [])),
                "quant": ua.get("quant", "none"),
                "is_baseline": bool(ua.get("is_baseline", False)),
                "matched_to": ua.get("matched_to"),
                "objective": _objective_names(st),
                "directions": [d.name.lower() for d in st.directions],
                "best_config": ua.get("best_config") or {},
                "fixed": ua.get("fixed") or {},  # a variant arm's fixed fields (never searched)
                "n_trials_budget": ua.get("n_trials"),
            }
        )
    return pd.DataFrame(rows).set_index("arm", drop=False)


def trials_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """One row per search trial of every arm: the content of ``trials.csv``."""
    rows = []
    for arm, st in studies.items():
        objective = _objective_names(st)
        for t in st.get_trials(deepcopy=False):
            row: dict[str, Any] = {
                "arm": arm,
                "number": t.number,
                "state": STATE_NAMES.get(t.state.name, t.state.name.lower()),
            }
            values = t.values or [math.nan] * len(objective)
            row.update({f"value.{name}": v for name, v in zip(objective, values, strict=False)})
            row.update({f"params.{k}": v for k, v in t.params.items()})
            metrics = t.user_attrs.get("metrics") or {}
            row.update({f"metrics.{k}": v for k, v in metrics.items()})
            row["reason"] = t.user_attrs.get("reason", "")
            row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id", "")
            row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
            rows.append(row)
    cols = ["arm", "number", "state"]
    df = pd.DataFrame(rows, columns=None if rows else cols)
    first = [c for c in df.columns if c in cols or c.startswith("value.")]
    groups = [[c for c in df.columns if c.startswith(p)] for p in ("params.", "metrics.")]
    rest = [c for c in df.columns if c not in first and not any(c in g for g in groups)]
    return df[first + sorted(groups[0]) + sorted(groups[1]) + rest]


def search_studies(study: str, storage: Any, arm: str) -> list[tuple[int, optuna.Study]]:
    """``study.search_repeats``: the further searches of ``arm`` (``NAME/<arm>/search<r>``, r >= 2)."""
    prefix = f"{study}/{arm}/search"
    names = optuna.study.get_all_study_names(storage=storage)
    found = sorted(
        int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()
    )
    return [(r, optuna.load_study(study_name=f"{prefix}{r}", storage=storage)) for r in found]


def replicates_frame(
    studies: dict[str, optuna.Study], searches: Mapping[str, list[tuple[int, optuna.Study]]] | None = None
) -> pd.DataFrame:
    """One row per (arm, seed) from each arm's ``replicates`` user attribute (of every search:
    ``searches`` from :func:`search_studies`; a seed names its search, ``ablate.storage.search_of``)."""
    rows = []
    for arm, st in studies.items():
        for each in [st, *(s for _, s in (searches or {}).get(arm, []))]:
            for seed, metrics in (each.user_attrs.get("replicates") or {}).items():
                rows.append({"arm": arm, "seed": int(seed), **metrics})
    df = pd.DataFrame(rows, columns=None if rows else ["arm", "seed", "test_em", "test_loss"])
    return df.sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)


def replications(
    study: str, storage: Any, arms: list[str], studies: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, optuna.Study]]:
    """``(arm, replication study)`` of each arm's current best that has one (``NAME/<arm>/replicate``
    unless a larger search re-pinned it: ``replicate_suffix``), and of a combination's own LoRA
    settings trained alone (``NAME/<arm>/lora-alone``), as the pseudo-arm ``<arm>/lora-alone``
    (arm names never contain "/", so it cannot collide with one)."""
    from ablate.storage import lora_alone_suffix, replicate_suffix, search_suffix

    names = set(optuna.study.get_all_study_names(storage=storage))
    for arm in arms:
        attrs = studies[arm].user_attrs if studies and arm in studies else {}
        for label, suffix in ((arm, replicate_suffix(attrs)), (lora_alone(arm), lora_alone_suffix(attrs))):
            if f"{study}/{arm}{suffix}" in names:
                yield label, optuna.load_study(study_name=f"{study}/{arm}{suffix}", storage=storage)
        for r, search in search_studies(study, storage, arm):  # study.search_repeats: seeds of their own
            name = f"{study}/{arm}{search_suffix(r)}{replicate_suffix(search.user_attrs)}"
            if name in names:
                yield arm, optuna.load_study(study_name=name, storage=storage)


def lora_alone(arm: str) -> str:
    """The pseudo-arm of ``arm``'s own LoRA settings trained alone (``study.interference``)."""
    return f"{arm}/lora-alone"


def items_frame(
    study: str, storage: Any, arms: list[str], studies: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Per-item outcomes of every replicate seed, as the study stored them on its replicate trials."""
    frames = []
    for arm, reps in replications(study, storage, arms, studies):
        for t in reps.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            items = t.user_attrs.get("items")
            if not items:
                continue
            df = pd.DataFrame(items).rename(columns={"index": "item"})
            df.insert(0, "seed", int(t.params["seed"]))
            df.insert(0, "arm", arm)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["arm", "seed", "item"], kind="stable")


def failures_frame(
    study: str, storage: Any, arms: list[str], studies: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Replicate seeds whose run failed or was pruned (non-finite loss, OOM after its retry, a
    crash) and that no later run of the same seed completed. Interrupted runs (a signal, a lost
    worker) are not the arm's fault and are left out: they are retried on resume."""
    from optuna.trial import TrialState

    from ablate.storage import interrupted

    rows = []
    for arm, reps in replications(study, storage, arms, studies):
        trials = reps.get_trials(deepcopy=False)
        skip = interrupted(reps)

        def seed_of(t: Any) -> int | None:
            seed = t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed"))
            return None if seed is None else int(seed)

        done = {seed_of(t) for t in trials if t.state == TrialState.COMPLETE}
        bad = {}
        for t in trials:
            seed = seed_of(t)
            gone = t.state in (TrialState.FAIL, TrialState.PRUNED) and t.number not in skip
            if gone and seed is not None and seed not in done and t.user_attrs.get("reason"):
                state = STATE_NAMES.get(t.state.name, "failed")
                bad[seed] = {"arm": arm, "seed": seed, "state": state, "reason": str(t.user_attrs["reason"])}
        rows += list(bad.values())
    return pd.DataFrame(rows, columns=FAILURE_COLUMNS)


def interference_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """LoRA-update similarity as the study recorded it, one row per figure: ``kind`` "with X" (LoRA
    beside X vs the same LoRA settings alone, one seed) or "reseed" (LoRA alone, seeds ``seed`` and
    ``seed2``); studies recorded before LoRA was held fixed have "tuned alone" rows (the baseline's
    LoRA, tuned apart from the combination's, vs the combination's)."""
    rows = []
    for arm, st in studies.items():
        rec = st.user_attrs.get("interference") or {}
        if rec.get("lora") == "fixed":
            for seed, v in (rec.get("with_x") or {}).items():
                rows += [{"arm": arm, "kind": "with X", "seed": int(seed), "seed2": None, **v}] if v else []
            for pair, v in (rec.get("reseed") or {}).items():
                a, b = (int(x) for x in pair.split(","))
                rows += [{"arm": arm, "kind": "reseed", "seed": a, "seed2": b, **v}] if v else []
        else:
            rows += [
                {"arm": arm, "kind": "tuned alone", "seed": int(seed), "seed2": None, **v}
                for seed, v in rec.items()
                if v
            ]
    return pd.DataFrame(rows, columns=INTERFERENCE_COLUMNS).astype({"seed2": "Int64"})


def capacity_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """Test EM and trainable params of each arm's best configuration at every capacity level."""
    rows = [
        {
            "arm": arm,
            "level": int(level),
            "seed": int(seed),
            "test_em": m.get("test_em"),
            "trainable_params": m.get("trainable_params"),
        }
        for arm, st in studies.items()
        for level, seeds in (st.user_attrs.get("capacity") or {}).items()
        for seed, m in (seeds or {}).items()
    ]
    return pd.DataFrame(rows, columns=CAPACITY_COLUMNS if not rows else None)


def grad_norm_curves(tracking_uri: str, data: StudyData) -> pd.DataFrame:
    """Per-component gradient-norm histories of the replicate runs (logged every step by the trainer)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = []
    for rec in data.replicates.to_dict("records"):
        run_id = rec.get("mlflow_run_id")
        if not isinstance(run_id, str) or not run_id:
            continue
        for comp in data.arms.loc[rec["arm"], "components"]:
            try:
                history = client.get_metric_history(run_id, f"grad_norm/{comp}")
            except Exception:  # a deleted run: the figure says what it has
                continue
            rows += [
                {
                    "arm": rec["arm"],
                    "seed": rec["seed"],
                    "component": comp,
                    "step": m.step,
                    "grad_norm": m.value,
                }
                for m in history
            ]
    cols = ["arm", "seed", "component", "step", "grad_norm"]
    return pd.DataFrame(rows, columns=cols).sort_values(["arm", "seed", "component", "step"])


def val_loss_curves(tracking_uri: str, study: str, replicates: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """``val_loss`` histories of the replicate runs, found through their recorded MLflow run ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    rows, missing = [], 0
    for rec in replicates.to_dict("records"):
        run_id = rec.get("mlflow_run_id")
        if not isinstance(run_id, str) or not run_id:
            missing += 1
            continue
        try:
            history = client.get_metric_history(run_id, "val_loss")
        except Exception:  # a deleted run or another server: say so below, keep the report
            missing += 1
            continue
        rows += [
            {"arm": rec["arm"], "seed": rec["seed"], "run_id": run_id, "step": m.step, "val_loss": m.value}
            for m in history
        ]
    note = f"{missing} replicate run(s) had no MLflow history at {tracking_uri}." if missing else ""
    cols = ["arm", "seed", "run_id", "step", "val_loss"]
    return pd.DataFrame(rows, columns=cols).sort_values(["arm", "seed", "step"]), note


def find_study_run(tracking_uri: str, study: str) -> str | None:
    """Run id of the newest ``ablate.level=study`` run in experiment ``study`` (None when absent)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`ablate.level` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def mlflow_down(tracking_uri: str) -> str | None:
    """Why a tracking server or database cannot be reached (None: it can, or the store is local),
    found within seconds: every read of a server that is down would wait out MLflow's retries."""
    from urllib.parse import urlsplit

    from ablate.preflight import check_tracking

    if urlsplit(tracking_uri).scheme.split("+")[0] not in ("http", "https", "postgresql", "mysql", "mssql"):
        return None
    try:
        check_tracking("mlflow", tracking_uri)
    except ConfigError as exc:
        return str(exc)
    return None


def collect(study: str, storage: str, tracking_uri: str | None) -> StudyData:
    """Everything the report reads: ``storage`` (a URL, opened once) and MLflow at ``tracking_uri``."""
    store = open_storage(storage, study)
    studies = load_studies(study, store)
    searches = {a: search_studies(study, store, a) for a in studies}
    data = StudyData(
        name=study,
        arms=arms_frame(studies),
        trials=trials_frame(studies),
        replicates=replicates_frame(studies, searches),
        studies=studies,
        searches=any(searches.values()),
    )
    data.items = items_frame(study, store, list(studies), studies)
    data.failures = failures_frame(study, store, list(studies), studies)
    data.interference = interference_frame(studies)
    data.capacity = capacity_frame(studies)
    if tracking_uri is None:
        data.curves_note = "No tracking URI given, so no learning curves (they live in MLflow)."
    elif (why := mlflow_down(tracking_uri)) is not None:
        data.curves_note = f"No learning curves: MLflow could not be reached ({why})."
    else:
        data.curves, data.curves_note = val_loss_curves(tracking_uri, study, data.replicates)
        data.grad_norms = grad_norm_curves(tracking_uri, data)
    return data
