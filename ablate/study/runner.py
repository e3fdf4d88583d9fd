"""A study in this worker: open and check it, search every arm, hand the replication phase
(``ablate.study.replication``: seeds, capacity levels, interference) the searched arms, report.

Optuna is driven directly (ask/tell through ``budget.drive``) rather than through
the Hydra Optuna sweeper plugin. Every arm is its own Optuna study ``NAME/<arm>``
with a budget that grows with its searched fields; the baseline is searched first and every other arm
with LoRA starts from its best LoRA values (an enqueued trial). The runner holds what
both phases share: the storage, its lock, the recorder, and ``run_one``, the one way a
trial is run and recorded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.components import BASE
from ablate.errors import ConfigError, redact
from ablate.schema import TrialConfig
from ablate.search import sample
from ablate.storage import (
    WORKER,
    Reaper,
    StorageLock,
    check_storage,
    open_storage,
    wait_for_running,
)
from ablate.study import records
from ablate.study.bench import Bench
from ablate.study.budget import (
    Done,
    Job,
    Progress,
    budget_left,
    counted,
    drive,
    prune_hook,
    waiting,
    within_budget,
)
from ablate.study.config import MATCHED, Arm, combination_arms
from ablate.study.matching import best_of, check_match, matched_rank, pin_best
from ablate.study.plan import PLAN_ATTR, WARM_START_SEED, Plan, check_plan, record, search_seed
from ablate.study.replication import Replication
from ablate.study.sampling import arm_study, directions, reseeder

if TYPE_CHECKING:  # types only: the runner imports Optuna and the training stack where it uses them
    from optuna import Study
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial, Trial

    from ablate.run import Outcome
    from ablate.tracking import Recorder


class StudyRunner:
    """Runs one study in this worker: search every arm, match, replicate, report."""

    def __init__(self, plan: Plan, echo: Callable[[str], None] = print) -> None:
        """From the study's plan (``ablate.study.plan.make_plan``), built once by the CLI."""
        self.plan = plan
        self.plain, self.spec, self.arms, self.heartbeat = plan.plain, plan.spec, plan.arms, plan.heartbeat
        self.spaces, self.trials, self.tracking = plan.spaces, plan.trials, plan.tracking
        self.echo = echo
        self.bench = Bench(self.plain, self.spec)
        self.mo = self.spec.sampler == "mo"
        #: the search this worker is in (``study.search_repeats``): 1, then 2, ... each one whole
        self.repeat = 1
        self.matched_space = list(self.spaces.get(MATCHED, []))  # before a search filters its targets

    def budget(self, arm: Arm) -> int:
        """The arm's search trials (``StudyConfig.budget``: per searched field, or ``n_trials``)."""
        return self.spec.budget(len(self.spaces[arm.name]))

    def optuna_study(self, storage: BaseStorage, arm: Arm, suffix: str = "") -> Study:
        train = self.trials[arm.name].train
        return arm_study(
            storage, self.spec, arm, self.spaces[arm.name], train.steps, train.eval_every, suffix, self.repeat
        )

    # -- the run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        storage, studies = self.open()
        left = sum(max(self.budget(a) - len(counted(studies[a.name])), 0) for a in self.arms)
        progress = Progress(total=left + sum(self._seeds_left(s) for s in studies.values()))
        started = time.perf_counter()
        with records.study_run(self.tracker, self.spec.name, self.lock) as srec:
            srec.log_params(
                {
                    "study": redact({**self.plain.get("study", {}), "storage": self.spec.storage_url}),
                    "search": self.plain.get("search", {}),
                }
            )
            totals = []
            for repeat in range(1, self.spec.search_repeats + 1):
                if repeat > 1:  # the next independent search of every arm, and its own seeds
                    self.repeat = repeat
                    studies = {a.name: self.optuna_study(storage, a) for a in self.arms}
                    progress.total += sum(
                        max(self.budget(a) - len(counted(s)), 0) + self._seeds_left(s)
                        for a, s in zip(self.arms, studies.values(), strict=True)
                    )
                self.search_all(studies, srec, progress)
                # matched-lora with nothing to match has no trial, so nothing to replicate
                active = [arm for arm in self.arms if counted(studies[arm.name])]
                Replication(self).run(active, studies, storage, srec, progress)
                totals += [records.summary(s) for s in studies.values()]
            self.repeat = 1
            studies = {a.name: self.optuna_study(storage, a) for a in self.arms}
            srec.log_metrics(
                {k: sum(t[k] for t in totals) for k in ("trials_complete", "trials_pruned", "trials_failed")}
                | {"worker_wall_s": time.perf_counter() - started}
            )
            result = {"studies": studies, "study_run_id": srec.run_id}
            if self.spec.report:
                result["report"] = self.write_report(srec.run_id)
        return result

    def write_report(self, study_run_id: str | None) -> Path | None:
        """reports/NAME/ and its copy in MLflow, once across workers (``ablate.report.publish``)."""
        try:
            from ablate.report.publish import publish
        except ImportError:  # the report's libraries are missing: the study's records stand
            return None
        uri = self.tracking.uri if self.tracking.backend == "mlflow" else None
        storage, lock = getattr(self, "storage", None), getattr(self, "lock", None)
        return publish(
            self.spec,
            uri,
            study_run_id,
            storage=storage,
            lock=lock,
            guarded=self.tracker.guarded,
            echo=self.echo,
        )

    def check(self) -> None:
        """Every user mistake and unreachable service surfaces here, before anything is written."""
        from ablate.preflight import check_tracking, limit_mlflow_retries

        check_storage(self.spec.storage_url)
        check_tracking(self.tracking.backend, self.tracking.uri)
        reports = Path("reports")  # found now, not after the whole study has run
        if self.spec.report and reports.exists() and not reports.is_dir():
            raise ConfigError(
                "study.report",
                True,
                "./reports is a file, so the report cannot be written: move it, or study.report=false",
            )
        limit_mlflow_retries()
        self.bench.encoded(self.trials[self.spec.baseline])
        self.bench.check_extremes(self.arms, self.spaces)

    def open(self) -> tuple[BaseStorage, dict[str, Study]]:
        """Check, then open the storage (with heartbeats), the lock, the tracker and the arm studies."""
        from ablate.tracking import make_tracker

        self.check()
        self.reaper = Reaper(self.heartbeat.max_retry, on_lost=self._lost)
        storage = self.storage = open_storage(self.spec.storage_url, self.heartbeat, self.reaper)
        self.lock = StorageLock(self.spec.storage_url)
        check_plan(storage, self.plan, self.lock, self.echo)  # before anything is written
        self.tracker = make_tracker(self.tracking)
        studies = {a.name: self.optuna_study(storage, a) for a in self.arms}
        planned = record(self.plan)
        for study in studies.values():  # recorded once; rewritten only by an accepted extension
            if study.user_attrs.get(PLAN_ATTR) != planned:
                study.set_user_attr(PLAN_ATTR, planned)
        self.wait_for_running([], studies.values())
        return storage, studies

    def _lost(self, study: Study, trial: FrozenTrial) -> None:
        """A trial whose worker died: say so, and mark its MLflow run FAILED."""
        worker = trial.user_attrs.get("worker", "?")
        self.echo(f"[{study.study_name}] trial {trial.number} lost with worker {worker}: failed, retried")
        if self.tracking.backend == "mlflow":
            records.fail_lost_run(self.tracker, self.spec.name, study.study_name, trial)

    def search_all(self, studies: Mapping[str, Study], srec: Recorder, progress: Progress) -> None:
        """Search every arm; again while a lost trial of another worker was given back to the
        budget after this worker had finished that arm (its retry waits for someone to run it)."""
        while True:
            ran = 0
            for arm in self.arms:
                if self.start(arm, studies):
                    with records.arm_run(self.tracker, srec, self.spec.name, arm, self.lock) as arec:
                        ran += self.search(arm, studies[arm.name], arec, progress)
                        arec.log_metrics(records.summary(studies[arm.name]))
            self.wait_for_running(studies.values())
            left = [
                a
                for a in self.arms
                if counted(studies[a.name]) and budget_left(self.budget(a))(studies[a.name])
            ]
            if not left or not ran and not any(waiting(studies[a.name]) for a in left):
                return

    def _seeds_left(self, study: Study) -> int:
        """Seeds still to run for this arm as planned (with looks: the first look's; a later look
        adds its seeds to the progress when it is taken)."""
        planned = self.spec.look_seeds[0]
        done = [len(study.user_attrs.get("replicates") or {})]
        if study.user_attrs.get("role") == "combination" and self.spec.interference:
            done.append(len(study.user_attrs.get("lora_alone") or {}))
        capacity = study.user_attrs.get("capacity") or {}
        done += [len(capacity.get(str(k)) or {}) for k in self.spec.capacity_levels or [] if k != 1]
        return sum(max(planned - n, 0) for n in done)

    def start(self, arm: Arm, studies: Mapping[str, Study]) -> bool:
        """Before an arm's search: the matched arm pins what it matches (False: nothing to match);
        an arm with LoRA other than the baseline starts from the baseline's best LoRA values."""
        study, baseline = studies[arm.name], studies[self.spec.baseline]
        if arm.matched:
            self.wait_for_running([studies[a.name] for a in self.arms if not a.matched])
            if not self.plan_match(studies):
                return False
        if arm.role == "baseline" or BASE not in arm.components or self.spec.sampler == "grid":
            return True
        self.wait_for_running([baseline])
        with self.lock(study.study_name):
            if not study.get_trials(deepcopy=False):
                space = {d.name: d for d in self.spaces[arm.name]}
                best = pin_best(baseline, self.mo)
                start = {  # a choice this arm cannot draw (matched-lora's targets) is left to the sampler
                    k: v
                    for k, v in best.params.items()
                    if k in space and (space[k].kind != "categorical" or v in space[k].choices)
                }
                # the baseline's best values on its own search seed would replay its luckiest run
                seed = search_seed(self.trials[arm.name].train.seed, self.repeat) + WARM_START_SEED
                study.enqueue_trial(
                    start, user_attrs={"enqueued_from": self.spec.baseline, "search_seed": seed}
                )
        return True

    def plan_match(self, studies: Mapping[str, Study]) -> bool:
        """Pin the count matched-lora matches: the trainable params of the best combination (best
        search objective among LoRA+X arms; failing those, among the other non-baseline arms). Only
        targets choices whose nearest rank is within the tolerance are searched (``matched_targets``);
        none: a one-line ConfigError naming the arms and counts."""
        matched = studies[MATCHED]
        if "matched_target_params" not in matched.user_attrs:
            others = [a for a in self.arms if a.role in ("combination", "single")]
            candidates = combination_arms(self.arms) or others
            if not candidates:
                return False
            best = {a.name: pin_best(studies[a.name], self.mo) for a in candidates}
            to, trial = best_of(best, maximize=directions(self.spec)[0] == "maximize")
            matched.set_user_attr("matched_to", to)
            matched.set_user_attr(
                "matched_target_params", int(trial.user_attrs["metrics"]["trainable_params"])
            )
        to, target = matched.user_attrs["matched_to"], matched.user_attrs["matched_target_params"]
        defaults = self.bench.defaults(self.arms[-1])[BASE]
        space = self.spaces[MATCHED]
        at = [n for n, d in enumerate(space) if d.name == "lora.targets"]
        # every search filters the targets choices afresh (another search may match another count)
        choices = list(self.matched_space[at[0]].choices) if at else [defaults.get("targets")]
        feasible = check_match(self.bench.model_config(self.arms[-1]), defaults, choices, target, to)
        if at:  # a targets set whose nearest rank misses the count cannot hold a matched LoRA
            space[at[0]] = dataclasses.replace(space[at[0]], choices=tuple(feasible))
            if matched.user_attrs.get("matched_targets") != feasible:
                matched.set_user_attr("matched_targets", feasible)
        return True

    def run_one(
        self, arm: Arm, cfg: TrialConfig, trial: Trial, phase: str, arec: Recorder, **kw: Any
    ) -> Outcome:
        """One recorded trial run (search or replicate) on this worker's base."""
        from ablate.run import run_trial, with_oom_retry

        name = f"{arm.name} #{trial.number}" if phase == "search" else f"{arm.name} seed {cfg.train.seed}"
        base = self.bench.base(cfg)
        tags = records.trial_tags(self.spec.name, arm, phase, cfg.train.seed, trial.number)
        if self.spec.search_repeats > 1:
            tags["search_repeat"] = self.repeat
        params = {"arm": arm.name, "base_bytes": self.bench.base_bytes}

        def attempt(run_cfg: TrialConfig, retry: bool) -> Outcome:
            return run_trial(
                run_cfg, base, self.bench.encoded(run_cfg), self.tracker,
                run_name=f"{name} (oom retry)" if retry else name, parent=arec,
                tags={**tags, "oom_retry": "1"} if retry else tags, params=params, **kw,
            )  # fmt: skip

        outcome = with_oom_retry(
            attempt,
            cfg,
            lambda note: trial.set_user_attr("oom_retry", note),
            lambda text: self.echo(f"[{arm.name}] trial {trial.number}: {text}"),
        )
        outcome.metrics["base_bytes"] = self.bench.base_bytes  # weights alone, apart from the peak
        return outcome

    def search(self, arm: Arm, study: Study, arec: Recorder, progress: Progress) -> int:
        dists = self.spaces[arm.name]
        matched = study.user_attrs if arm.matched else {}

        def prepare(trial: Trial) -> TrialConfig:
            values = sample(trial, dists)
            if arm.matched:  # the rank that matches the pinned count for these targets
                fields = {**self.bench.defaults(arm)[BASE], **values.get(BASE, {})}
                model = self.bench.model_config(arm)
                rank, _ = matched_rank(model, fields, matched["matched_target_params"], matched["matched_to"])
                trial.set_user_attr("derived", {BASE: {"r": rank}})
                values.setdefault(BASE, {})["r"] = rank
            evals = {"knockout": False, "zero_shot": False, "save_components": False}
            # every search trial trains on train.seed (search r of study.search_repeats: a seed of its
            # own), but the warm start has its own (set when enqueued)
            seed = trial.user_attrs.get("search_seed")
            if seed is None and self.repeat > 1:
                seed = search_seed(self.trials[arm.name].train.seed, self.repeat)
            return self.bench.config(arm, values, seed=seed, run=("search", trial.number), evals=evals)

        def work(trial: Trial, cfg: TrialConfig) -> Done:
            on_eval = None if self.mo else prune_hook(trial, self.spec.objective, cfg.train.steps)
            outcome = self.run_one(arm, cfg, trial, "search", arec, on_eval=on_eval, eval_split="validation")
            m = outcome.metrics
            value = [m["val_em"], m["trainable_params"]] if self.mo else m[self.spec.objective]
            text = f"{self.spec.objective}={m[self.spec.objective]:.4f} val_em={m['val_em']:.3f}"
            return Done(value, {"metrics": records.jsonable(m), "mlflow_run_id": outcome.run_id}, text)

        def report(trial: Trial, text: str, took: float) -> None:
            self.echo(progress.line(arm.name, "trial", trial.number + 1, self.budget(arm), text, took))

        worker = "" if self.lock.shared else WORKER
        n = self.budget(arm)
        job = Job(budget_left(n), prepare, work, reseeder(self.spec, dists, worker), report, within_budget(n))
        return drive(study, job, self.lock, self.reaper)

    def wait_for_running(self, studies: list[Study], orphans_of: Iterable[Study] = ()) -> None:
        poll = min(5.0, self.heartbeat.interval_s)
        wait_for_running(
            list(studies), self.lock, self.echo, orphans_of=orphans_of, poll_s=poll, reaper=self.reaper
        )
