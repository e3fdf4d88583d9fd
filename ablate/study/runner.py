"""The phases of a study in this worker: search every arm, pin and replicate the best
configurations, scale them (capacity levels), measure LoRA interference, report.

Optuna is driven directly (ask/tell through ``budget.drive``) rather than through
the Hydra Optuna sweeper plugin. Every arm is its own Optuna study ``NAME/<arm>``
with the same trial budget; the baseline is searched first and every other arm
with LoRA starts from its best LoRA values (an enqueued trial). Replication runs
through ``NAME/<arm>/replicate`` (and ``NAME/<arm>/capacity<k>``), whose trials
are the enqueued seeds, so workers sharing one storage split the work.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from ablate.config import TrackingConfig, TrialConfig
from ablate.errors import ConfigError, redact
from ablate.search import Dist, parse_space, sample
from ablate.study import records
from ablate.study.bench import Bench
from ablate.study.budget import (
    Done,
    Job,
    Progress,
    budget_left,
    counted,
    drive,
    enqueue_seeds,
    prune_hook,
    waiting,
)
from ablate.study.config import MATCHED, Arm, StudyConfig, combination_arms, parse_arms
from ablate.study.matching import best_of, check_match, matched_rank, pin_best, scaled
from ablate.study.sampling import arm_study, directions, reseeder
from ablate.study.storage import (
    WORKER,
    StorageLock,
    check_storage,
    fail_orphans,
    open_storage,
    wait_for_running,
)


class StudyRunner:
    """Runs one study in this worker: search every arm, match, replicate, report."""

    def __init__(
        self, plain: Mapping[str, Any], overrides: list[str], echo: Callable[[str], None] = print
    ) -> None:
        self.plain = copy.deepcopy(dict(plain))
        self.echo = echo
        self.spec = StudyConfig.from_dict(self.plain.get("study") or {})
        self.arms = parse_arms(self.spec, (self.plain.get("quant") or {}).get("method", "none"))
        self.spaces = {a.name: self._space(a) for a in self.arms}
        self._check_search_overrides(overrides)
        self.bench = Bench(self.plain, self.spec)
        self.trials = {a.name: self.bench.config(a, {}) for a in self.arms}  # validates every arm's config
        tracking = dict(self.plain.get("tracking") or {})
        tracking["experiment"] = self.spec.name
        self.tracking = TrackingConfig.from_dict(tracking)
        self.mo = self.spec.sampler == "mo"

    def _space(self, arm: Arm) -> list[Dist]:
        dists = parse_space(self.plain.get("search") or {}, arm.components)
        return [d for d in dists if d.name != "lora.r"] if arm.matched else dists  # its rank is derived

    def _check_search_overrides(self, overrides: list[str]) -> None:
        used = {c for a in self.arms for c in a.components}
        for ov in overrides:
            key = ov.split("=", 1)[0].lstrip("+~")
            if key.startswith("search.") and key.split(".")[1] not in used:
                comp = key.split(".")[1]
                raise ConfigError(
                    key, ov.split("=", 1)[1], f"component {comp} is in no arm of study {self.spec.name}"
                )

    def optuna_study(self, storage: Any, arm: Arm, suffix: str = "") -> Any:
        train = self.trials[arm.name].train
        return arm_study(
            storage, self.spec, arm, self.spaces[arm.name], train.steps, train.eval_every, suffix
        )

    # -- the run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ablate.tracking import make_tracker

        # Every user mistake surfaces before the storage or MLflow is written to.
        check_storage(self.spec.storage_url)
        self.bench.encoded(self.trials[self.spec.baseline])
        self.bench.check_extremes(self.arms, self.spaces)
        storage = open_storage(self.spec.storage_url)
        self.lock = StorageLock(self.spec.storage_url)
        self.tracker = make_tracker(self.tracking)
        studies = {a.name: self.optuna_study(storage, a) for a in self.arms}
        self.wait_for_running([], studies.values())
        left = sum(max(self.spec.n_trials - len(counted(s)), 0) for s in studies.values())
        progress = Progress(total=left + sum(self._seeds_left(s) for s in studies.values()))
        started = time.perf_counter()
        with records.study_run(self.tracker, self.spec.name) as srec:
            srec.log_params(
                {
                    "study": redact({**self.plain.get("study", {}), "storage": self.spec.storage_url}),
                    "search": self.plain.get("search", {}),
                }
            )
            for arm in self.arms:
                if self.start(arm, studies):
                    with records.arm_run(self.tracker, srec, self.spec.name, arm) as arec:
                        self.search(arm, studies[arm.name], arec, progress)
                        arec.log_metrics(records.summary(studies[arm.name]))
            self.wait_for_running(studies.values())
            for arm in self.arms:
                if counted(studies[arm.name]):  # matched-lora with nothing to match has no trial
                    with records.arm_run(self.tracker, srec, self.spec.name, arm) as arec:
                        self.replicate_arm(arm, studies, storage, arec, progress)
            totals = [records.summary(s) for s in studies.values()]
            srec.log_metrics(
                {k: sum(t[k] for t in totals) for k in ("trials_complete", "trials_pruned", "trials_failed")}
                | {"worker_wall_s": time.perf_counter() - started}
            )
            result = {"studies": studies, "study_run_id": srec.run_id}
            if self.spec.report:
                result["report"] = self.write_report(srec.run_id)
        return result

    def _seeds_left(self, study: Any) -> int:
        done = [len(study.user_attrs.get("replicates") or {})]
        capacity = study.user_attrs.get("capacity") or {}
        done += [len(capacity.get(str(k)) or {}) for k in self.spec.capacity_levels or [] if k != 1]
        return sum(max(self.spec.seeds - n, 0) for n in done)

    def start(self, arm: Arm, studies: Mapping[str, Any]) -> bool:
        """Before an arm's search: the matched arm pins what it matches (False: nothing to match);
        an arm with LoRA other than the baseline starts from the baseline's best LoRA values."""
        study, baseline = studies[arm.name], studies[self.spec.baseline]
        if arm.matched:
            self.wait_for_running([studies[a.name] for a in self.arms if not a.matched])
            if not self.plan_match(studies):
                return False
        if arm.role == "baseline" or "lora" not in arm.components or self.spec.sampler == "grid":
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
                study.enqueue_trial(start, user_attrs={"enqueued_from": self.spec.baseline})
        return True

    def plan_match(self, studies: Mapping[str, Any]) -> bool:
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
        defaults = self.bench.defaults(self.arms[-1])["lora"]
        space = self.spaces[MATCHED]
        at = [n for n, d in enumerate(space) if d.name == "lora.targets"]
        choices = list(space[at[0]].choices) if at else [defaults.get("targets")]
        feasible = check_match(self.bench.model_config(self.arms[-1]), defaults, choices, target, to)
        if at:  # a targets set whose nearest rank misses the count cannot hold a matched LoRA
            space[at[0]] = dataclasses.replace(space[at[0]], choices=tuple(feasible))
            if matched.user_attrs.get("matched_targets") != feasible:
                matched.set_user_attr("matched_targets", feasible)
        return True

    def _run(self, arm: Arm, cfg: TrialConfig, trial: Any, phase: str, arec: Any, **kw: Any) -> Any:
        """One recorded trial run (search or replicate) on this worker's base."""
        from ablate.run import run_trial

        name = f"{arm.name} #{trial.number}" if phase == "search" else f"{arm.name} seed {cfg.train.seed}"
        base = self.bench.base(cfg)
        outcome = run_trial(
            cfg,
            base,
            self.bench.encoded(cfg),
            self.tracker,
            run_name=name,
            parent=arec,
            tags=records.trial_tags(self.spec.name, arm, phase, cfg.train.seed, trial.number),
            params={"arm": arm.name, "base_bytes": self.bench.base_bytes},
            **kw,
        )
        outcome.metrics["base_bytes"] = self.bench.base_bytes  # weights alone, apart from the peak
        return outcome

    def search(self, arm: Arm, study: Any, arec: Any, progress: Progress) -> None:
        dists = self.spaces[arm.name]
        matched = study.user_attrs if arm.matched else {}

        def prepare(trial: Any) -> TrialConfig:
            values = sample(trial, dists)
            if arm.matched:  # the rank that matches the pinned count for these targets
                fields = {**self.bench.defaults(arm)["lora"], **values.get("lora", {})}
                model = self.bench.model_config(arm)
                rank, _ = matched_rank(model, fields, matched["matched_target_params"], matched["matched_to"])
                trial.set_user_attr("derived", {"lora": {"r": rank}})
                values.setdefault("lora", {})["r"] = rank
            cfg = self.bench.config(arm, values)
            cfg.eval.knockout = cfg.eval.zero_shot = cfg.eval.save_components = False
            return cfg

        def work(trial: Any, cfg: TrialConfig) -> Done:
            on_eval = None if self.mo else prune_hook(trial, self.spec.objective, cfg.train.steps)
            outcome = self._run(arm, cfg, trial, "search", arec, on_eval=on_eval, eval_split="validation")
            m = outcome.metrics
            value = [m["val_em"], m["trainable_params"]] if self.mo else m[self.spec.objective]
            text = f"{self.spec.objective}={m[self.spec.objective]:.4f} val_em={m['val_em']:.3f}"
            return Done(value, {"metrics": records.jsonable(m), "mlflow_run_id": outcome.run_id}, text)

        def report(trial: Any, text: str, took: float) -> None:
            self.echo(progress.line(arm.name, "trial", trial.number + 1, self.spec.n_trials, text, took))

        worker = "" if self.lock.shared else WORKER
        job = Job(budget_left(self.spec.n_trials), prepare, work, reseeder(self.spec, dists, worker), report)
        drive(study, job, self.lock)

    def replicate_arm(
        self, arm: Arm, studies: Mapping[str, Any], storage: Any, arec: Any, progress: Progress
    ) -> None:
        """The best configuration over the seeds (``replicates``), at each capacity level
        (``capacity`` = {k: {seed: metrics}}), and LoRA's interference in a combination."""
        study = studies[arm.name]
        best = pin_best(study, self.mo)
        if arm.matched and "matched_params" not in study.user_attrs:
            study.set_user_attr("matched_params", int(best.user_attrs["metrics"]["trainable_params"]))
        values = study.user_attrs["best_config"]
        study.set_user_attr("replicates", self.replicate(arm, values, storage, "/replicate", arec, progress))
        levels = [k for k in self.spec.capacity_levels or [] if k != 1]
        if levels:
            capacity = {"1": study.user_attrs["replicates"]}
            for k in levels:
                at_k = scaled(values, self.bench.defaults(arm), k)
                capacity[str(k)] = self.replicate(arm, at_k, storage, f"/capacity{k}", arec, progress)
            study.set_user_attr("capacity", capacity)
        arec.log_metrics(records.summary(study))
        if self.tracking.backend == "mlflow" and arm.role == "combination":
            records.record_interference(self.tracking.uri, study, studies[self.spec.baseline], arec)

    def replicate(
        self, arm: Arm, values: Mapping[str, Any], storage: Any, suffix: str, arec: Any, progress: Progress
    ) -> dict[str, Any]:
        """Run ``values`` over the seeds through the study ``NAME/<arm><suffix>``: {seed: metrics}."""
        from optuna.trial import TrialState

        reps = self.optuna_study(storage, arm, suffix=suffix)
        with self.lock(reps.study_name):
            fail_orphans(reps)
            enqueue_seeds(reps, range(1, self.spec.seeds + 1))

        def prepare(trial: Any) -> TrialConfig:
            cfg = self.bench.config(arm, values, seed=int(trial.suggest_int("seed", 1, self.spec.seeds)))
            # the baseline's replicates also score the bare base: the interaction's zero-shot term
            cfg.eval.zero_shot = arm.role == "baseline" and suffix == "/replicate"
            return cfg

        def work(trial: Any, cfg: TrialConfig) -> Done:
            outcome = self._run(
                arm,
                cfg,
                trial,
                "replicate" if suffix == "/replicate" else suffix[1:],
                arec,
                eval_split="test",
            )
            metrics = {**records.jsonable(outcome.metrics), "mlflow_run_id": outcome.run_id}
            # with eval.zero_shot, run_trial's items also hold the bare base's outcome per item
            items = dict(outcome.items)
            text = f"test_em={outcome.metrics['test_em']:.3f}"
            return Done(outcome.metrics["test_em"], {"metrics": metrics, "items": items}, text)

        def report(trial: Any, text: str, took: float) -> None:
            phase = "seed" if suffix == "/replicate" else f"{suffix[1:]} seed"
            self.echo(progress.line(arm.name, phase, int(trial.params["seed"]), self.spec.seeds, text, took))

        drive(reps, Job(waiting, prepare, work, None, report), self.lock)
        self.wait_for_running([reps])  # another worker may still run a seed of this arm
        return {
            str(t.params["seed"]): t.user_attrs["metrics"]
            for t in reps.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE
        }

    def wait_for_running(self, studies: Any, orphans_of: Any = ()) -> None:
        wait_for_running(list(studies), self.lock, self.echo, orphans_of=orphans_of)

    def write_report(self, study_run_id: str | None) -> Any:
        from pathlib import Path

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
