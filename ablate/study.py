"""Studies: per-arm Optuna searches under one name, a parameter-matched LoRA arm, replication.

Optuna is driven directly (ask/tell) rather than through the Hydra Optuna
sweeper plugin, which pins old Optuna, cannot prune and runs trials in
blocking batches. Every arm is its own Optuna study ``NAME/<arm>`` with the
same trial budget; replication runs through a second Optuna study per arm,
``NAME/<arm>/replicate``, whose trials are the enqueued seeds, so several
workers sharing one storage URL split the work without a scheduler of ours.

What is recorded (the report reads only this):
- arm study user attrs: ablate_study, arm, components, quant, is_baseline,
  matched_to, objective, n_trials, best_config, replicates {seed: metrics};
- search trials: params ``<component>.<field>``, objective value(s),
  intermediate values per evaluation, user attrs metrics, mlflow_run_id, reason;
- MLflow: experiment NAME; study run > arm runs > trial runs (tags ablate.level,
  arm, phase, seed, trial_number, state, reason).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate import components
from ablate.components import lora as lora_mod
from ablate.components._arch import dims
from ablate.components.quant import METHODS
from ablate.config import TrackingConfig, TrialConfig, redact
from ablate.errors import ConfigError, require
from ablate.search import Dist, parse_space, sample, unflatten

SAMPLERS = ("tpe", "random", "grid", "mo")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = {"val_loss": "minimize", "val_em": "maximize"}
MATCHED = "matched-lora"
_ARM = re.compile(r"^(?P<components>[a-z+]+)(@(?P<quant>\w+))?$")


class Pruned(Exception):
    """Raised from the evaluation hook to stop a trial; recorded as pruned, not failed."""

    ablate_state = "pruned"


@dataclass(frozen=True)
class Arm:
    name: str
    components: tuple[str, ...]
    quant: str
    matched: bool = False  # the parameter-matched LoRA arm: derived, not searched

    @property
    def searched(self) -> bool:
        return not self.matched


@dataclass
class StudyConfig:
    name: str
    arms: list[str]
    baseline: str = "lora"
    matched: bool = True  # add a LoRA-only arm whose rank matches the best combination's params
    quant: str | None = None  # arms without @quant use this (else the quant group)
    n_trials: int = 4  # per arm: every arm gets the same budget
    seeds: int = 3  # replicate seeds of each arm's best configuration
    train_steps: int | None = None  # steps per study trial (None: train.steps)
    sampler: str = "tpe"
    pruner: str = "median"
    objective: str = "val_loss"  # search objective on the validation split (mo: val_em and params)
    storage: str | None = None  # Optuna storage URL; default sqlite:///studies/NAME.db
    sampler_seed: int = 0
    report: bool = True  # write reports/NAME/ when the study ends
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyConfig:
        data = dict(data)
        for key in data:
            require(key in cls.__dataclass_fields__, f"study.{key}", data[key], "unknown field")
        require(bool(data.get("name")), "study", data.get("name"), "select a study: ablate study=NAME")
        cfg = cls(**data)
        for key in ("n_trials", "seeds"):
            value = getattr(cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"study.{key}", value, "must be an integer > 0")
        if cfg.train_steps is not None and (not isinstance(cfg.train_steps, int) or cfg.train_steps <= 0):
            raise ConfigError("study.train_steps", cfg.train_steps, "must be an integer > 0 or null")
        require(
            cfg.sampler in SAMPLERS, "study.sampler", cfg.sampler, f"must be one of {', '.join(SAMPLERS)}"
        )
        require(cfg.pruner in PRUNERS, "study.pruner", cfg.pruner, f"must be one of {', '.join(PRUNERS)}")
        require(
            cfg.objective in OBJECTIVES,
            "study.objective",
            cfg.objective,
            f"must be one of {', '.join(OBJECTIVES)}",
        )
        require(
            isinstance(cfg.arms, list) and len(cfg.arms) > 0,
            "study.arms",
            cfg.arms,
            "must be a non-empty list",
        )
        return cfg

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///studies/{self.name}.db"


def parse_arms(cfg: StudyConfig, default_quant: str) -> list[Arm]:
    arms = []
    for spec in cfg.arms:
        m = _ARM.match(str(spec).replace(" ", ""))
        if not m:
            raise ConfigError(
                "study.arms", spec, "spell arms as components joined with + and an optional @quant"
            )
        names = components.parse_arm(m["components"], key="study.arms")
        quant = m["quant"] or cfg.quant or default_quant
        require(quant in METHODS, "study.arms", spec, f"unknown quant (one of {', '.join(METHODS)})")
        arms.append(Arm(str(spec), names, quant))
    names = [a.name for a in arms]
    require(len(set(names)) == len(names), "study.arms", cfg.arms, "an arm is listed twice")
    require(cfg.baseline in names, "study.baseline", cfg.baseline, f"not among the arms ({', '.join(names)})")
    base = next(a for a in arms if a.name == cfg.baseline)
    require(base.components == ("lora",), "study.baseline", cfg.baseline, "the baseline must be LoRA-only")
    if cfg.matched:
        arms.append(Arm(MATCHED, ("lora",), base.quant, matched=True))
    return arms


def combination_arms(arms: list[Arm]) -> list[Arm]:
    return [a for a in arms if a.searched and len(a.components) > 1]


def matched_rank(config: Any, lora_fields: Mapping[str, Any], target_params: int) -> tuple[int, int]:
    """The LoRA rank whose closed-form count is nearest ``target_params``: (rank, params)."""
    d = dims(config)
    count = {
        r: lora_mod.expected_params(d, components.CONFIGS["lora"].from_dict({**lora_fields, "r": r}))
        for r in (1, 2)
    }
    per_rank = count[2] - count[1]
    extra = count[1] - per_rank  # DoRA magnitudes do not grow with r
    rank = max(1, round((target_params - extra) / per_rank))
    return rank, rank * per_rank + extra


# --------------------------------------------------------------------------- storage


def check_storage(url: str) -> None:
    """A one-line ConfigError for a malformed or unreachable storage URL; writes nothing."""
    import sqlalchemy

    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's URL
        raise ConfigError("study.storage", shown, f"malformed storage URL ({type(exc).__name__})") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        require(bool(db) and db != ":memory:", "study.storage", shown, "a sqlite storage needs a file path")
        parent = Path(db).parent
        if Path(db).parent == Path("studies"):
            parent.mkdir(exist_ok=True)
        require(parent.is_dir(), "study.storage", shown, f"directory {parent} does not exist")
    else:
        try:
            engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(parsed))
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - unreachable host, bad credentials, missing driver
            reason = " ".join(str(exc).split())[:160]
            raise ConfigError("study.storage", shown, f"cannot connect: {reason}") from None


def open_storage(url: str) -> Any:
    """The Optuna RDB storage (creates its tables on first use); call ``check_storage`` first."""
    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what happened
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers starting together race to create Optuna's schema; the loser retries.
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


class StorageLock:
    """A lock shared by every worker of a storage: a file lock next to a SQLite file, a
    PostgreSQL advisory lock otherwise. Optuna has no "ask unless the budget is spent"."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        parsed = sqlalchemy.engine.make_url(url)
        self.backend = parsed.get_backend_name()
        self.path = Path(parsed.database or "").with_suffix(".lock") if self.backend == "sqlite" else None
        self.engine = sqlalchemy.create_engine(url) if self.backend.startswith("postgres") else None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.path is not None:
            import fcntl

            with open(self.path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        elif self.engine is not None:
            import sqlalchemy

            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:  # other databases: no cross-worker lock (a budget may overshoot by a trial per worker)
            yield


def _connect_timeout(parsed: Any) -> dict[str, Any]:
    return {"connect_timeout": 5} if parsed.get_backend_name().startswith("postgres") else {}


# --------------------------------------------------------------------------- the study


@dataclass
class Progress:
    total: int
    done: int = 0
    seconds: float = 0.0

    def line(self, arm: str, phase: str, index: int, of: int, outcome: str, took: float) -> str:
        self.done += 1
        self.seconds += took
        left = max(self.total - self.done, 0)
        eta = left * (self.seconds / self.done)
        return f"[{arm}] {phase} {index}/{of}: {outcome} ({took:.0f}s)  overall {self.done}/{self.total}, ETA {eta / 60:.1f} min"


class StudyRunner:
    """Runs one study in this worker: search every arm, match, replicate, report."""

    def __init__(
        self, plain: Mapping[str, Any], overrides: list[str], echo: Callable[[str], None] = print
    ) -> None:
        self.plain = copy.deepcopy(dict(plain))
        self.echo = echo
        self.spec = StudyConfig.from_dict(self.plain.get("study") or {})
        self.arms = parse_arms(self.spec, (self.plain.get("quant") or {}).get("method", "none"))
        self.spaces = {
            a.name: parse_space(self.plain.get("search") or {}, a.components) for a in self.arms if a.searched
        }
        self._check_search_overrides(overrides)
        self.trials = {a.name: self.trial_config(a, {}) for a in self.arms}  # validates every arm's config
        tracking = dict(self.plain.get("tracking") or {})
        tracking["experiment"] = self.spec.name
        self.tracking = TrackingConfig.from_dict(tracking)
        self.bases: dict[str, Any] = {}  # one loaded (maybe quantised) base per quant method
        self.splits: Any = None  # tokenized once; every arm uses the same data

    # -- configuration -------------------------------------------------------
    def _check_search_overrides(self, overrides: list[str]) -> None:
        used = {c for a in self.arms for c in a.components}
        for ov in overrides:
            key = ov.split("=", 1)[0].lstrip("+~")
            if key.startswith("search."):
                comp = key.split(".")[1]
                if comp not in used:
                    raise ConfigError(
                        key, ov.split("=", 1)[1], f"component {comp} is in no arm of study {self.spec.name}"
                    )

    def trial_config(
        self, arm: Arm, values: Mapping[str, Mapping[str, Any]], *, seed: int | None = None
    ) -> TrialConfig:
        plain = copy.deepcopy(self.plain)
        peft_all = plain.get("peft") or {}
        plain["peft"] = {c: {**(peft_all.get(c) or {}), **(values.get(c) or {})} for c in arm.components}
        quant = dict(plain.get("quant") or {})
        if quant.get("method") != arm.quant:  # arm@quant: that method's usual settings (QLoRA: double quant)
            quant["double_quant"] = arm.quant in ("nf4", "fp4")
        plain["quant"] = {**quant, "method": arm.quant}
        plain["train"] = dict(plain["train"])
        if self.spec.train_steps:
            plain["train"]["steps"] = self.spec.train_steps
            plain["train"]["eval_every"] = min(plain["train"]["eval_every"], self.spec.train_steps)
        if seed is not None:
            plain["train"]["seed"] = seed
        return TrialConfig.from_dict(plain)

    # -- shared resources (loaded once per worker) ---------------------------
    def base(self, trial: TrialConfig) -> Any:
        from ablate.models import load_base

        key = trial.quant.method
        if key not in self.bases:
            self.bases[key] = load_base(trial.model, trial.quant)
        return self.bases[key]

    def encoded(self, trial: TrialConfig, base: Any) -> Any:
        from ablate.run import prepare_data

        if self.splits is None:
            self.splits = prepare_data(trial.data, base.tokenizer)
        return self.splits

    def check_extremes(self) -> None:
        """Attach every arm at the high end of its ranges once: a bad range fails now, not mid-study."""
        for arm in self.arms:
            if not arm.searched:
                continue
            high: dict[str, dict[str, Any]] = {}
            for d in self.spaces[arm.name]:
                if d.kind != "categorical":
                    high.setdefault(d.component, {})[d.field] = int(d.high) if d.kind == "int" else d.high
            trial = self.trial_config(arm, high)
            base = self.base(trial)
            try:
                components.attach(base.model, trial.peft, trial.data.max_length).detach()
            except ConfigError as err:  # name the search range that reaches the bad value
                comp, _, fname = err.key.removeprefix("peft.").partition(".")
                if fname in high.get(comp, {}):
                    raise ConfigError(f"search.{comp}.{fname}.high", err.value, err.reason) from None
                raise

    # -- optuna --------------------------------------------------------------
    def sampler(self, arm: Arm) -> Any:
        import optuna

        seed = self.spec.sampler_seed
        if self.spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.spec.sampler == "grid":
            return optuna.samplers.GridSampler({d.name: d.grid() for d in self.spaces[arm.name]}, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)

    def pruner(self) -> Any:
        import optuna

        train = next(iter(self.trials.values())).train
        steps, every = train.steps, train.eval_every
        if self.spec.pruner == "median" and self.spec.sampler != "mo":
            return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=every)
        if self.spec.pruner == "hyperband" and self.spec.sampler != "mo":
            return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps)
        return optuna.pruners.NopPruner()

    def directions(self) -> list[str]:
        if self.spec.sampler == "mo":
            return ["maximize", "minimize"]  # task metric up, trainable params down
        return [OBJECTIVES[self.spec.objective]]

    def optuna_study(self, storage: Any, arm: Arm, suffix: str = "") -> Any:
        import optuna

        study = optuna.create_study(
            study_name=f"{self.spec.name}/{arm.name}{suffix}",
            storage=storage,
            load_if_exists=True,
            directions=self.directions() if not suffix else ["maximize"],
            sampler=self.sampler(arm)
            if arm.searched and not suffix
            else optuna.samplers.RandomSampler(seed=0),
            pruner=self.pruner() if not suffix else optuna.pruners.NopPruner(),
        )
        if not suffix:
            attrs = {
                "ablate_study": self.spec.name,
                "arm": arm.name,
                "components": list(arm.components),
                "quant": arm.quant,
                "is_baseline": arm.name == self.spec.baseline,
                "objective": ["val_em", "trainable_params"]
                if self.spec.sampler == "mo"
                else self.spec.objective,
                "n_trials": self.spec.n_trials if arm.searched else 0,
            }
            for k, v in attrs.items():
                if study.user_attrs.get(k) != v:
                    study.set_user_attr(k, v)
        return study

    # -- the run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ablate.tracking import make_tracker

        # Every user mistake surfaces before the storage or MLflow is written to.
        check_storage(self.spec.storage_url)
        first = next(iter(self.trials.values()))
        self.base(first)
        self.encoded(first, self.bases[first.quant.method])
        self.check_extremes()
        storage = open_storage(self.spec.storage_url)
        self.lock = StorageLock(self.spec.storage_url)
        tracker = make_tracker(self.tracking)
        studies = {a.name: self.optuna_study(storage, a) for a in self.arms}
        for study in studies.values():
            _fail_orphans(study)
        searched = [a for a in self.arms if a.searched]
        remaining = sum(max(self.spec.n_trials - len(_counted(studies[a.name])), 0) for a in searched)
        seeds_left = sum(
            max(self.spec.seeds - len(studies[a.name].user_attrs.get("replicates") or {}), 0)
            for a in self.arms
        )
        progress = Progress(total=remaining + seeds_left)
        started = time.perf_counter()
        study_run = _find_run(tracker, {"ablate.level": "study", "study": self.spec.name})
        with tracker.run(
            self.spec.name, tags={"ablate.level": "study", "study": self.spec.name}, run_id=study_run
        ) as srec:
            srec.log_params(
                {
                    "study": redact({**self.plain.get("study", {}), "storage": self.spec.storage_url}),
                    "search": self.plain.get("search", {}),
                }
            )
            for arm in searched:
                with self._arm_run(tracker, srec, arm) as arec:
                    self.search(arm, studies[arm.name], tracker, arec, progress)
                    arec.log_metrics(_summary(studies[arm.name]))
            self.wait_for_running([studies[a.name] for a in searched])
            if self.spec.matched:
                self.match(studies)
            for arm in self.arms:
                with self._arm_run(tracker, srec, arm) as arec:
                    self.replicate(arm, studies[arm.name], storage, tracker, arec, progress)
                    arec.log_metrics(_summary(studies[arm.name]))
            totals = [_summary(studies[a.name]) for a in searched]
            srec.log_metrics(
                {
                    "trials_complete": sum(t["trials_complete"] for t in totals),
                    "trials_pruned": sum(t["trials_pruned"] for t in totals),
                    "trials_failed": sum(t["trials_failed"] for t in totals),
                    "worker_wall_s": time.perf_counter() - started,
                }
            )
            result = {"studies": studies, "study_run_id": srec.run_id}
            if self.spec.report:
                result["report"] = self.write_report(srec.run_id)
        return result

    def _arm_run(self, tracker: Any, parent: Any, arm: Arm) -> Any:
        tags = {
            "ablate.level": "arm",
            "study": self.spec.name,
            "arm": arm.name,
            "components": ",".join(arm.components),
            "quant": arm.quant,
        }
        run_id = _find_run(tracker, {"ablate.level": "arm", "study": self.spec.name, "arm": arm.name})
        return tracker.run(arm.name, tags=tags, parent=parent, run_id=run_id)

    def _run(
        self, arm: Arm, cfg: TrialConfig, trial: Any, phase: str, ctx: tuple[Any, Any], **kw: Any
    ) -> Any:
        """One recorded trial run (search or replicate) on this worker's shared base."""
        from ablate.run import run_trial

        tracker, arec = ctx
        tags = {
            "ablate.level": "trial",
            "study": self.spec.name,
            "arm": arm.name,
            "phase": phase,
            "seed": cfg.train.seed,
            "trial_number": trial.number,
        }
        name = f"{arm.name} #{trial.number}" if phase == "search" else f"{arm.name} seed {cfg.train.seed}"
        base = self.base(cfg)
        return run_trial(
            cfg,
            base,
            self.encoded(cfg, base),
            tracker,
            run_name=name,
            parent=arec,
            tags=tags,
            params={"arm": arm.name},
            **kw,
        )

    def search(self, arm: Arm, study: Any, tracker: Any, arec: Any, progress: Progress) -> None:
        import optuna
        from optuna.trial import TrialState

        dists: list[Dist] = self.spaces[arm.name]
        while True:
            with self.lock(study.study_name):  # check-then-ask is atomic across workers: no overshoot
                if len(_counted(study)) >= self.spec.n_trials:
                    break
                trial = study.ask()
                trial.set_user_attr("worker", WORKER)
            cfg = self.trial_config(arm, sample(trial, dists))
            cfg.eval.knockout = cfg.eval.zero_shot = cfg.eval.save_components = False
            t0 = time.perf_counter()

            def on_eval(step: int, metrics: dict[str, float], trial: Any = trial) -> None:
                value = metrics[self.spec.objective]
                if len(self.directions()) == 1:
                    trial.report(value, step)
                    if trial.should_prune():
                        raise Pruned(f"pruned at step {step}: {self.spec.objective}={value:.4f}")

            try:
                outcome = self._run(
                    arm, cfg, trial, "search", (tracker, arec), on_eval=on_eval, eval_split="validation"
                )
            except Pruned as exc:
                trial.set_user_attr("reason", str(exc))
                study.tell(trial, state=TrialState.PRUNED)
                text = str(exc)
            except (ConfigError, KeyboardInterrupt):
                trial.set_user_attr("reason", INTERRUPTED)  # gives the budget back on resume
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed trial is recorded and the study goes on
                trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:1000])
                study.tell(trial, state=TrialState.FAIL)
                text = f"FAILED {type(exc).__name__}: {exc}"
            else:
                m = outcome.metrics
                trial.set_user_attr("metrics", _jsonable(m))
                trial.set_user_attr("mlflow_run_id", outcome.run_id)
                value = (
                    [m["val_em"], m["trainable_params"]]
                    if self.spec.sampler == "mo"
                    else m[self.spec.objective]
                )
                study.tell(trial, value)
                text = f"{self.spec.objective}={m[self.spec.objective]:.4f} val_em={m['val_em']:.3f}"
            took = time.perf_counter() - t0
            self.echo(progress.line(arm.name, "trial", trial.number + 1, self.spec.n_trials, text, took))
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break

    def wait_for_running(self, studies: list[Any], poll_s: float = 5.0) -> None:
        """Wait until no worker runs a trial of these studies: best configurations are pinned,
        and replicate results summarised, only from finished work."""
        from optuna.trial import TrialState

        announced = False
        while True:
            for study in studies:
                _fail_orphans(study)
            running = sum(len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) for s in studies)
            if not running:
                return
            if not announced:
                self.echo(f"waiting for {running} trial(s) running in other workers")
                announced = True
            time.sleep(poll_s)

    def best(self, study: Any) -> Any:
        """The search trial to replicate, pinned in the storage the first time it is chosen."""
        from optuna.trial import TrialState

        if "best_trial" in study.user_attrs:
            return study.trials[study.user_attrs["best_trial"]]
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            raise RuntimeError(f"{study.study_name}: no complete search trial to replicate")
        if self.spec.sampler == "mo":  # the Pareto trial with the best metric, then the fewest params
            best = max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
        else:
            best = study.best_trial
        study.set_user_attr("best_trial", best.number)
        study.set_user_attr("best_config", unflatten(best.params))
        return best

    def match(self, studies: Mapping[str, Any]) -> dict[str, Any] | None:
        """Pin matched-lora: the baseline's tuned LoRA, with the rank that matches the trainable
        parameters of the best combination (best search objective among multi-component arms;
        failing those, among the other non-baseline arms)."""
        matched = studies[MATCHED]
        if "best_config" in matched.user_attrs:
            return matched.user_attrs["best_config"]
        others = [a for a in self.arms if a.searched and a.name != self.spec.baseline]
        candidates = combination_arms(self.arms) or others
        if not candidates:
            return None
        maximize = self.directions()[0] == "maximize"
        scored = [(a, self.best(studies[a.name])) for a in candidates]
        best_arm, best_trial = max(scored, key=lambda at: at[1].values[0] if maximize else -at[1].values[0])
        target = int(best_trial.user_attrs["metrics"]["trainable_params"])
        base_values = unflatten(self.best(studies[self.spec.baseline]).params).get("lora", {})
        lora_fields = {**(self.plain["peft"].get("lora") or {}), **base_values}
        base = self.base(self.trials[self.spec.baseline])
        rank, params = matched_rank(base.model.config, lora_fields, target)
        # Keep the baseline's tuned update scale: alpha/r (alpha/sqrt(r) with rsLoRA) stays the same.
        ratio = rank / lora_fields["r"]
        alpha = float(lora_fields["alpha"]) * (math.sqrt(ratio) if lora_fields.get("rslora") else ratio)
        values = {"lora": {**base_values, "r": rank, "alpha": alpha}}
        for key, value in {
            "matched_to": best_arm.name,
            "matched_target_params": target,
            "matched_params": params,
            "best_config": values,
        }.items():
            matched.set_user_attr(key, value)
        self.echo(
            f"[{MATCHED}] rank {rank} ({params:,} params) matches {best_arm.name} "
            f"({target:,} params, {100 * (params / target - 1):+.1f}%)"
            + ("" if abs(params / target - 1) <= 0.10 else "; NOT within 10%: the closest rank is too coarse")
        )
        return values

    def replicate(
        self, arm: Arm, study: Any, storage: Any, tracker: Any, arec: Any, progress: Progress
    ) -> None:
        from optuna.trial import TrialState

        if arm.searched:
            self.best(study)
        values = study.user_attrs.get("best_config")
        if values is None:  # matched-lora in a study with nothing to match
            return
        reps = self.optuna_study(storage, arm, suffix="/replicate")
        _fail_orphans(reps)
        with self.lock(reps.study_name):
            # Enqueue each seed that is neither done nor taken: a seed whose run failed or was
            # interrupted is tried again on resume, and no seed is ever handed out twice.
            live = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
            taken = {
                t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed"))
                for t in reps.get_trials(deepcopy=False, states=live)
            }
            for seed in range(1, self.spec.seeds + 1):
                if seed not in taken:
                    reps.enqueue_trial({"seed": seed})
        while True:
            with self.lock(reps.study_name):  # check-then-ask atomically: never a seed twice
                if not reps.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    break
                trial = reps.ask()  # the storage hands each waiting seed to exactly one worker
                trial.set_user_attr("worker", WORKER)
            seed = int(trial.suggest_int("seed", 1, self.spec.seeds))
            cfg = self.trial_config(arm, values, seed=seed)
            cfg.eval.zero_shot = False
            t0 = time.perf_counter()
            try:
                outcome = self._run(arm, cfg, trial, "replicate", (tracker, arec), eval_split="test")
            except (ConfigError, KeyboardInterrupt):
                reps.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:  # noqa: BLE001 - recorded; the seed is retried on resume
                reps.tell(trial, state=TrialState.FAIL)
                text = f"FAILED {type(exc).__name__}: {exc}"
            else:
                trial.set_user_attr(
                    "metrics", {**_jsonable(outcome.metrics), "mlflow_run_id": outcome.run_id}
                )
                reps.tell(trial, outcome.metrics["test_em"])
                text = f"test_em={outcome.metrics['test_em']:.3f}"
            self.echo(progress.line(arm.name, "seed", seed, self.spec.seeds, text, time.perf_counter() - t0))
        self.wait_for_running([reps])  # another worker may still run a seed of this arm
        done = {
            str(t.params["seed"]): t.user_attrs["metrics"]
            for t in reps.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE
        }
        study.set_user_attr("replicates", done)

    def write_report(self, study_run_id: str | None) -> Path | None:
        try:
            from ablate.report import build_report, log_report
        except ImportError:
            return None
        out = Path("reports") / self.spec.name
        tracking_uri = self.tracking.uri if self.tracking.backend == "mlflow" else None
        build_report(self.spec.name, self.spec.storage_url, tracking_uri, out, baseline=self.spec.baseline)
        if tracking_uri and study_run_id:
            log_report(tracking_uri, study_run_id, out)
        return out


WORKER = f"{socket.gethostname()}:{os.getpid()}"
INTERRUPTED = "interrupted"


def _fail_orphans(study: Any) -> None:
    """Trials left RUNNING by a dead process of this host (killed mid-trial) are failed as
    interrupted, which gives their budget back; trials of live workers are left alone."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(t._trial_id, "reason", INTERRUPTED)
            study.tell(t.number, state=TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def _counted(study: Any) -> list[Any]:
    """Trials that use the budget: finished ones (but interrupted) and those running now."""
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and t.user_attrs.get("reason") != INTERRUPTED
    ]


def _summary(study: Any) -> dict[str, float]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    out = {
        "trials_complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(study.directions) == 1:
        out["best_value"] = study.best_value
    reps = study.user_attrs.get("replicates") or {}
    if reps:
        ems = [r["test_em"] for r in reps.values()]
        out["replicate_test_em_mean"] = sum(ems) / len(ems)
    return out


def _jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _find_run(tracker: Any, tags: Mapping[str, str]) -> str | None:
    """Reuse the MLflow run that a previous invocation of this study created."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = tracker.find_runs(query)
    return runs[0].info.run_id if runs else None
