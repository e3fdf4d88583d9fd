"""The replication phase: each arm's pinned best configuration over the seeds, each capacity
level, and each combination's LoRA alone (interference).

The seeds are ``study.seeds``, or (``study.seeds=auto``) taken in looks: every arm at the first
look's seeds, then only the arms whose primary comparison is still open, and the baseline while
any is (``ablate.study.looks`` decides each look once across workers). Each replication is its
own Optuna study ``NAME/<arm><suffix>`` whose trials are the enqueued seeds, so workers sharing
one storage split the work. The phase runs inside a ``StudyRunner``, which it reaches through
``Context``: the runner's settings, its lock, its recorder and its one way of running a trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ablate.components import BASE
from ablate.schema import StudyConfig, TrackingConfig, TrialConfig
from ablate.storage import SEARCH_SEED_STRIDE, lora_alone_suffix, replicate_suffix
from ablate.study import looks as L
from ablate.study import records
from ablate.study.bench import Bench
from ablate.study.budget import Done, Job, Progress, drive, enqueue_seeds, queued, waiting
from ablate.study.config import Arm
from ablate.study.matching import pin_best, scaled

if TYPE_CHECKING:  # types only
    from optuna import Study
    from optuna.storages import BaseStorage
    from optuna.trial import Trial

    from ablate.run import Outcome
    from ablate.tracking import Recorder


class Context(Protocol):
    """What the phase uses of the study runner (``ablate.study.runner.StudyRunner``)."""

    spec: StudyConfig
    arms: list[Arm]
    bench: Bench
    tracking: TrackingConfig
    tracker: Any
    lock: Any
    reaper: Any
    mo: bool
    echo: Callable[[str], None]
    repeat: int  # which search of study.search_repeats (1: the first, or the only one)

    def optuna_study(self, storage: BaseStorage, arm: Arm, suffix: str = "") -> Study: ...

    def run_one(
        self, arm: Arm, cfg: TrialConfig, trial: Trial, phase: str, arec: Recorder, **kw: Any
    ) -> Outcome: ...

    def wait_for_running(self, studies: list[Study], orphans_of: Iterable[Study] = ()) -> None: ...


class Replication:
    """Replicate every searched arm: seeds (in looks with ``seeds=auto``), then the extras."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: search r replicates on seeds of its own (``ablate.storage.SEARCH_SEED_STRIDE``)
        self.offset = SEARCH_SEED_STRIDE * (ctx.repeat - 1)

    def run(
        self, active: list[Arm], studies: Mapping[str, Study], storage: BaseStorage, srec: Recorder,
        progress: Progress,
    ) -> None:  # fmt: skip
        """Every arm in ``active`` (the searched ones): its seeds, then its extras at those seeds."""
        seeds = self.seeds(active, studies, storage, srec, progress)
        if self.ctx.repeat > 1:  # capacity levels and LoRA alone: read from the first search only
            return
        for arm in active:
            with records.arm_run(self.ctx.tracker, srec, self.ctx.spec.name, arm, self.ctx.lock) as arec:
                self.replicate_extras(arm, studies, storage, arec, progress, seeds[arm.name])

    def seeds(
        self, active: list[Arm], studies: Mapping[str, Study], storage: BaseStorage, srec: Recorder,
        progress: Progress,
    ) -> dict[str, int]:  # fmt: skip
        """Replicate every arm's best configuration: at ``study.seeds``, or (``seeds=auto``) in looks:
        every arm at the first look's seeds, then only the arms whose primary comparison is still
        open, and the baseline while any is (``ablate.study.looks``). Returns each arm's seeds."""
        plan = self.ctx.spec.look_seeds
        design = L.design_for(self.ctx.spec, self.ctx.arms) if self.ctx.spec.sequential else None
        primary = L.primary_arms(self.ctx.arms, self.ctx.spec.baseline)
        seeds = {arm.name: plan[0] for arm in active}
        for k, n in enumerate(plan):
            if design is None:
                todo = active
            else:
                searched = {a.name for a in active}  # a primary arm whose search never completed: no seeds
                arms_open = [
                    a
                    for a in L.open_at(L.recorded(studies[self.ctx.spec.baseline]), primary, k)
                    if a in searched
                ]
                if k and not arms_open:
                    break
                todo = [a for a in active if not k or a.name in arms_open or a.name == self.ctx.spec.baseline]
                if k:
                    progress.total += sum(n - seeds[a.name] for a in todo)
            for arm in todo:
                with records.arm_run(self.ctx.tracker, srec, self.ctx.spec.name, arm, self.ctx.lock) as arec:
                    self.replicate_best(arm, studies, storage, arec, progress, n)
                seeds[arm.name] = n
            if design is not None:
                L.decide(self.ctx.spec, design, k, arms_open, studies, storage, self.ctx.lock, self.ctx.echo)
        return seeds

    def replicate_best(
        self, arm: Arm, studies: Mapping[str, Study], storage: BaseStorage, arec: Recorder,
        progress: Progress, seeds: int,
    ) -> None:  # fmt: skip
        """The arm's pinned best configuration over seeds 1..``seeds`` (``replicates``)."""
        study = studies[arm.name]
        best = pin_best(study, self.ctx.mo)
        if arm.matched and study.user_attrs.get("matched_params") is None:  # None: superseded
            study.set_user_attr("matched_params", int(best.user_attrs["metrics"]["trainable_params"]))
        values = study.user_attrs["best_config"]
        suffix = replicate_suffix(study.user_attrs)
        study.set_user_attr("replicates", self.replicate(arm, values, storage, suffix, arec, progress, seeds))

    def replicate_extras(
        self, arm: Arm, studies: Mapping[str, Study], storage: BaseStorage, arec: Recorder,
        progress: Progress, seeds: int,
    ) -> None:  # fmt: skip
        """At the arm's seeds: each capacity level (``capacity`` = {k: {seed: metrics}}), and LoRA
        alone beside a combination (interference)."""
        study = studies[arm.name]
        values = study.user_attrs["best_config"]
        levels = [k for k in self.ctx.spec.capacity_levels or [] if k != 1]
        if levels:
            capacity = {"1": study.user_attrs["replicates"]}
            for k in levels:
                at_k = scaled(values, self.ctx.bench.defaults(arm), k)
                capacity[str(k)] = self.replicate(arm, at_k, storage, f"/capacity{k}", arec, progress, seeds)
            study.set_user_attr("capacity", capacity)
        if arm.role == "combination" and self.ctx.spec.interference:
            self.replicate_lora_alone(arm, study, storage, arec, progress, seeds)
        arec.log_metrics(records.summary(study))

    def replicate_lora_alone(
        self, arm: Arm, study: Study, storage: BaseStorage, arec: Recorder, progress: Progress, seeds: int
    ) -> None:
        """The combination's own LoRA settings trained alone on the same seeds (``lora_alone``):
        the report's "what X adds at fixed LoRA", and the reference that makes interference
        measurable (LoRA beside X vs the same LoRA alone, same seed; LoRA alone across seeds).
        The baseline's LoRA was tuned alone and may differ in rank, alpha and targets, so it
        cannot serve: the difference would mix those hyperparameters with interference."""
        fixed = tuple((k, v) for k, v in arm.fixed if k.startswith("lora."))
        alone = Arm(arm.name, (BASE,), arm.quant, "single", fixed)
        values = {BASE: dict(study.user_attrs["best_config"].get(BASE) or {})}
        suffix = lora_alone_suffix(study.user_attrs)
        study.set_user_attr(
            "lora_alone", self.replicate(alone, values, storage, suffix, arec, progress, seeds)
        )
        if self.ctx.tracking.backend == "mlflow":
            records.record_interference(self.ctx.tracking.uri, study, arec)

    def replicate(
        self,
        arm: Arm,
        values: Mapping[str, Any],
        storage: BaseStorage,
        suffix: str,
        arec: Recorder,
        progress: Progress,
        seeds: int,
    ) -> dict[str, Any]:
        """Run ``values`` over seeds 1..``seeds`` through the study ``NAME/<arm><suffix>``: {seed: metrics}."""
        from optuna.trial import TrialState

        reps = self.ctx.optuna_study(storage, arm, suffix=suffix)
        with self.ctx.lock(reps.study_name):
            self.ctx.reaper(reps)
            enqueue_seeds(reps, range(self.offset + 1, self.offset + seeds + 1))

        def prepare(trial: Trial) -> TrialConfig:
            seed = int(trial.suggest_int("seed", 1, self.offset + self.ctx.spec.seed_cap))
            # the baseline's first replicate also scores the bare base (the interaction's zero-shot
            # term): the bare base is deterministic, so once per study, not once per seed and arm
            first = arm.role == "baseline" and suffix.startswith("/replicate") and seed == 1
            evals = {"zero_shot": first}
            return self.ctx.bench.config(arm, values, seed=seed, run=("replicate", None), evals=evals)

        def work(trial: Trial, cfg: TrialConfig) -> Done:
            outcome = self.ctx.run_one(
                arm,
                cfg,
                trial,
                "replicate" if suffix.startswith("/replicate") else suffix[1:],
                arec,
                eval_split="test",
            )
            metrics = {**records.jsonable(outcome.metrics), "mlflow_run_id": outcome.run_id}
            # with eval.zero_shot, run_trial's items also hold the bare base's outcome per item
            items = dict(outcome.items)
            text = f"test_em={outcome.metrics['test_em']:.3f}"
            return Done(outcome.metrics["test_em"], {"metrics": metrics, "items": items}, text)

        def report(trial: Trial, text: str, took: float) -> None:
            phase = "seed" if suffix.startswith("/replicate") else f"{suffix[1:]} seed"
            seed = int(trial.params["seed"]) - self.offset
            if self.offset:
                phase = f"search {self.ctx.repeat} {phase}"
            self.ctx.echo(progress.line(arm.name, phase, seed, seeds, text, took))

        while True:
            drive(reps, Job(waiting, prepare, work, None, report, queued), self.ctx.lock, self.ctx.reaper)
            self.ctx.wait_for_running([reps])  # another worker may still run a seed of this arm
            if not waiting(reps):  # ... or died running it: its retry waits, so run it here
                break
        return {
            str(t.params["seed"]): t.user_attrs["metrics"]
            for t in reps.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE
        }
