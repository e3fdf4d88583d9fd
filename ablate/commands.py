"""The commands behind the CLI: plain functions of one typed ``Job``.

The CLI composes the config once and builds the ``Job`` once (:func:`prepare`: the schema's
checks, and for a study its whole plan), before torch is imported; the command receives it and
builds nothing again. Each command then checks what needs the outside world (data files, the
model, the stores) and only then opens a tracking run, so a user's mistake never leaves a
half-written run behind.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.errors import ConfigError, redact, require
from ablate.schema import Config, ExportConfig, StudyConfig, TrackingConfig, TrialConfig

if TYPE_CHECKING:
    from ablate.study.plan import Plan


@dataclass(frozen=True)
class Job:
    """One command's typed configuration, built once from the composed config."""

    command: str  # train | study | worker | report | export
    plain: dict[str, Any]  # the composed config, resolved (what was recorded and shown)
    overrides: list[str]  # the command line's overrides (workers re-run them)
    config: Config  # workers, heartbeat
    trial: TrialConfig | None = None  # train
    plan: Plan | None = None  # study, worker
    study: StudyConfig | None = None  # report, export
    tracking: TrackingConfig | None = None  # report, export
    export: ExportConfig | None = field(default=None)  # export
    #: study.tasks: each task's plan (its study ``NAME.<task>``), in order; empty: one task
    tasks: dict[str, Plan] = field(default_factory=dict)


def prepare(
    command: str, plain: Mapping[str, Any], overrides: list[str], tasks: Mapping[str, Mapping[str, Any]] | None = None
) -> Job:  # fmt: skip
    """Every check the command makes of its config, made once, before torch is imported: the
    schema's (types, ranges, choices, cross-field rules), and for a study its whole plan (arms,
    search spaces, each arm's trial config; with ``study.tasks``, each task's, from ``tasks``: the
    config composed for each). Raises ``ConfigError`` naming the key and value."""
    plain = dict(plain)
    config = Config.from_dict(plain)
    if command == "train":
        return Job(command, plain, list(overrides), config, trial=TrialConfig.from_dict(plain))
    if command in ("study", "worker"):
        from ablate.study.plan import make_plan, task_plans

        plan = make_plan(plain, overrides)
        return Job(
            command, plain, list(overrides), config, plan=plan, tasks=task_plans(plan, tasks or {}, overrides)
        )
    study = StudyConfig.from_dict(plain.get("study"))
    export = ExportConfig.from_dict(plain.get("export")) if command in ("export", "bundle") else None
    tracking = TrackingConfig.from_dict(plain.get("tracking"))
    return Job(command, plain, list(overrides), config, study=study, tracking=tracking, export=export)


def run(job: Job) -> Any:
    return {
        "train": train_command,
        "study": study_command,
        "worker": study_command,  # a worker is a study process sharing storage with others
        "report": report_command,
        "export": export_command,
        "bundle": bundle_command,
    }[job.command](job)


def train_command(job: Job) -> dict[str, float]:
    """``ablate train``: one trial of one arm, recorded as one MLflow run."""
    from ablate.data import load_splits
    from ablate.models import load_base
    from ablate.preflight import check_tracking, limit_mlflow_retries
    from ablate.run import prepare_data, run_trial
    from ablate.tracking import make_tracker
    from ablate.train import NonFiniteLoss

    trial = job.trial
    assert trial is not None
    check_tracking(trial.tracking.backend, trial.tracking.uri)  # unreachable: one line, within seconds
    limit_mlflow_retries()
    load_splits(trial.data)  # data mistakes surface before the (slow) model load
    base = load_base(trial.model, trial.quant)
    data = prepare_data(trial.data, base.tokenizer)
    tracker = make_tracker(trial.tracking)
    try:
        outcome = run_trial(trial, base, data, tracker, tags={"phase": "train"})
    except NonFiniteLoss as exc:  # an outcome of the configuration, not a crash: no traceback
        print(
            f"training stopped: {exc}; the run is recorded with state=pruned "
            "(try a lower learning rate, or train.precision=fp32)",
            file=sys.stderr,
        )
        sys.exit(1)
    if getattr(tracker, "outages", 0):  # MLflow is this run's only record: never leave it on stdout alone
        path = local_record(trial, outcome)
        print(f"MLflow did not record all of this run: its results are in {path}", file=sys.stderr)
    print(summary(trial.arm_name, trial.quant.method, outcome.metrics, outcome.run_id, trial.tracking.uri))
    return outcome.metrics


def local_record(trial: Any, outcome: Any) -> Path:
    """``ablate-runs/<UTC time>-<arm>.json``: the resolved config (secrets hidden), the metrics and
    the per-item outcomes of a run that MLflow did not record whole."""
    import json
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path("ablate-runs") / f"{stamp}-{trial.arm_name.replace('+', '_')}.json"
    path.parent.mkdir(exist_ok=True)
    record = {
        "config": redact(trial.to_dict()),
        "metrics": outcome.metrics,
        "items": getattr(outcome, "items", None),
        "mlflow_run_id": outcome.run_id,
    }
    path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return path


def summary(arm: str, quant: str, m: dict[str, float], run_id: str | None, uri: str) -> str:
    lines = [
        f"arm {arm} (quant={quant}): {int(m['steps'])} steps",
        f"  test exact match  {m['test_em']:.3f}"
        + (f"   (zero-shot {m['zero_shot/test_em']:.3f})" if "zero_shot/test_em" in m else ""),
        f"  test loss         {m['test_loss']:.4f}   val loss {m['val_loss']:.4f}",
        f"  trainable params  {int(m['trainable_params']):,} ({m['trainable_pct']:.3f}%)",
        f"  throughput        {m['tokens_per_s']:.0f} tokens/s, {m['step_time_s']:.2f} s/step",
        f"  peak memory       {m['peak_mem_mb']:.0f} MiB   wall {m['wall_s']:.0f} s",
    ]
    knock = {k.split("/")[1]: v for k, v in m.items() if k.startswith("knockout/")}
    if knock:
        on = (
            f"   (on {int(m['knockout_items'])} items: all on {m['knockout_base/test_em']:.3f})"
            if "knockout_items" in m
            else ""
        )
        lines.append("  knockout test EM  " + ", ".join(f"-{n}: {v:.3f}" for n, v in knock.items()) + on)
    if run_id:
        shown = redact(uri)  # the password is the user's to type, never ours to print
        lines.append(f"  MLflow run {run_id} in {shown}  (browse: mlflow ui --backend-store-uri {shown})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `ablate` command")


def study_command(job: Job) -> dict[str, Any]:
    """``ablate study=NAME``: search every arm, match, replicate, report; resumable."""
    from ablate.study import StudyRunner
    from ablate.study.workers import WorkersFailed, run_workers

    assert job.plan is not None
    if job.tasks:
        return tasks_command(job)
    runner = StudyRunner(job.plan)
    if job.config.workers == 1:
        result = runner.run()
    else:  # N local worker processes on the study's storage (ablate/study/workers.py)
        try:
            result = run_workers(runner, job.overrides, job.config.workers)
        except WorkersFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.code)
    print(study_summary(runner, result))
    return result


def tasks_command(job: Job) -> dict[str, Any]:
    """``study.tasks``: every task's study in turn (its own search and replication per arm, on this
    worker's base; other workers take their share through the storage), then the pooled report."""
    from ablate.study import StudyRunner
    from ablate.study.workers import WorkersFailed, run_task_workers

    assert job.plan is not None
    runners = {task: StudyRunner(plan) for task, plan in job.tasks.items()}
    results = {}
    if job.config.workers > 1:  # N processes, each through every task, sharing each task's storage
        try:
            results = run_task_workers(runners, job.overrides, job.config.workers)
        except WorkersFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.code)
    for task, runner in runners.items():
        if task not in results:
            print(f"task {task}: study {runner.spec.name}")
            results[task] = runner.run()
        print(study_summary(runner, results[task]))
    spec = job.plan.spec
    if spec.report and job.command == "study":
        from ablate.report.tasks import build_task_report

        uri = job.plan.tracking.uri if job.plan.tracking.backend == "mlflow" else None
        out = build_task_report(
            spec.name,
            spec.task_labels,
            spec.storage_url,
            uri,
            Path("reports") / spec.name,
            baseline=spec.baseline,
        )
        print(f"report: {out}/report.md (and report.html): each arm pooled over {len(job.tasks)} tasks")
    return {"tasks": results}


def study_summary(runner: Any, result: dict[str, Any]) -> str:
    import statistics

    lines = [f"study {runner.spec.name}: storage {redact(runner.spec.storage_url)}"]
    for arm in runner.arms:
        reps = list((result["studies"][arm.name].user_attrs.get("replicates") or {}).values())
        if not reps:
            lines.append(f"  {arm.name:<22} no replicate results")
            continue
        ems = [r["test_em"] for r in reps]
        spread = f" ± {statistics.stdev(ems):.3f} (sd)" if len(ems) > 1 else ""
        lines.append(
            f"  {arm.name:<22} test EM {statistics.fmean(ems):.3f}{spread} over {len(ems)} seeds, "
            f"{int(reps[0]['trainable_params']):,} trainable params"
        )
    verdict = Path(result["report"]) / "verdict.json" if result.get("report") else None
    if verdict is not None and verdict.is_file():  # what the study found, in the report's words
        lines.append("  verdict (paired over seeds and test items, 95% CIs):")
        lines += [
            f"    - {line}" for line in json.loads(verdict.read_text(encoding="utf-8")).get("lines", [])
        ]
    if result.get("report"):
        lines.append(f"  report: {result['report']}/report.md (and report.html)")
    if runner.tracking.backend == "mlflow":
        lines.append(
            f"  runs: mlflow ui --backend-store-uri {redact(runner.tracking.uri)}   (experiment {runner.spec.name})"
        )
        exp_id = getattr(getattr(runner, "tracker", None), "experiment_id", None)
        if exp_id:  # MLflow 3's UI opens GenAI views unless the link asks for model training
            lines.append(
                f"  then open http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
            )
    return "\n".join(lines)


def existing_store(uri: str | None) -> str | None:
    """A tracking URI to *read* (report, export): a SQLite file that does not exist is no store at
    all (None), not one to create; the report then says it has no learning curves."""
    if uri and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"no MLflow store at {uri}: reading the study storage alone", file=sys.stderr)
        return None
    return uri


def report_command(job: Job) -> str:
    """``ablate report study=NAME``: rebuild reports/NAME/ from what was recorded."""

    from ablate.preflight import check_name
    from ablate.report import build_report
    from ablate.storage import check_storage

    spec, tracking = job.study, job.tracking
    assert spec is not None and tracking is not None
    check_name("study.name", spec.name)  # it becomes reports/NAME/
    check_storage(spec.storage_url)  # unreachable or malformed URL: one line, exit 2
    uri = existing_store(tracking.uri if tracking.backend == "mlflow" else None)
    if spec.tasks:  # every task's report, and each arm pooled over the tasks
        from ablate.report.tasks import build_task_report

        out = build_task_report(
            spec.name,
            spec.task_labels,
            spec.storage_url,
            uri,
            Path("reports") / spec.name,
            baseline=spec.baseline,
        )
        print(f"report: {out}/report.md (and report.html)")
        return str(out)
    out = build_report(spec.name, spec.storage_url, uri, Path("reports") / spec.name, baseline=spec.baseline)
    if uri:  # the experiment's description and the arm runs' comparison metrics follow the new report
        from ablate.report.publish import describe_study

        describe_study(uri, spec.name, spec.description, out)
    print(f"report: {out}/report.md (and report.html)")
    return str(out)


def bundle_command(job: Job) -> str:
    """``ablate bundle study=NAME out=FILE.tar.gz``: the study's storage copy, report, plan, versions and
    data hashes in one archive (``ablate.bundle``); ``ablate report bundle=FILE`` rebuilds the verdict."""
    from ablate.bundle import write_bundle
    from ablate.storage import check_storage

    spec, opts = job.study, job.export
    assert spec is not None and opts is not None and opts.out is not None
    check_storage(spec.storage_url)
    out = write_bundle(
        spec.name,
        spec.storage_url,
        Path(opts.out),
        spec.baseline,
        spec.task_labels or None,
        opts.weights or [],
    )
    print(f"bundle: {out} (rebuild anywhere: ablate report bundle={out})")
    return str(out)


def export_command(job: Job) -> str:
    """``ablate export study=NAME [arm=ARM] [seed=S] out=DIR``: the arm's trained components, usable elsewhere."""
    from ablate.export import export
    from ablate.storage import check_storage

    spec, opts, tracking = job.study, job.export, job.tracking
    assert spec is not None and opts is not None and tracking is not None
    name = spec.name
    labels = spec.task_labels
    if labels or opts.task is not None:  # a study over tasks: one task's study, NAME.<task>
        from ablate.storage import task_study

        require(
            opts.task in labels, "task", opts.task,
            f"name one of the study's tasks ({', '.join(labels)})" if labels else "the study has no study.tasks",
        )  # fmt: skip
        name = task_study(spec.name, opts.task)
    check_storage(spec.storage_url)
    uri = existing_store(tracking.uri if tracking.backend == "mlflow" else None)
    done = export(name, spec.storage_url, uri, opts, baseline=spec.baseline, question=spec.description)
    print(done.summary())
    return str(done.out)


COMPARE_KEYS = (
    "baseline",
    "table",
    "lm_eval",
    "metric",
    "filter",
    "task",
    "sesoi",
    "alpha",
    "primary",
    "out",
    "name",
)


def compare_command(args: list[str]) -> str:
    """``ablate compare baseline=ARM (table=FILE | lm_eval=DIR) [metric=M] ...``: the verdict table,
    intervals, variance split and Holm over the primary family on results made elsewhere, written
    as a study's report (``reports/NAME/``, default ``reports/compare``)."""
    from ablate.preflight import check_name
    from ablate.report import external as X
    from ablate.report import write_report

    opts: dict[str, str] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or key not in COMPARE_KEYS:
            raise ConfigError(
                key or arg, value, f"not an argument of ablate compare (one of {', '.join(COMPARE_KEYS)}=...)"
            )
        opts[key] = value
    if "baseline" not in opts:
        raise ConfigError("baseline", None, "name the baseline arm, e.g. baseline=lora")
    if ("table" in opts) == ("lm_eval" in opts):
        raise ConfigError(
            "table",
            opts.get("table"),
            "give exactly one input: table=FILE (arm, seed, item, score) or lm_eval=DIR",
        )
    sesoi, alpha = _fraction(opts, "sesoi", 0.02), _fraction(opts, "alpha", 0.05)
    if "table" in opts:
        df = X.read_table(opts["table"])
    else:
        if "metric" not in opts:
            raise ConfigError(
                "metric", None, "name the lm-eval metric to compare, e.g. metric=exact_match or metric=acc"
            )
        df = X.read_lm_eval(opts["lm_eval"], opts["metric"], opts.get("filter"), opts.get("task"))
    df = X.check(df, opts["baseline"])
    primary = (
        [a for a in opts["primary"].strip("[]").replace(" ", "").split(",") if a]
        if "primary" in opts
        else None
    )
    name = opts.get("name", "compare")
    check_name("name", name)
    if "table" in opts:
        metric = f"the score column of {Path(opts['table']).name} (0-1 per item)"
    else:
        where = "".join(f", {k} {opts[k]}" for k in ("task", "filter") if opts.get(k))
        metric = f"lm-evaluation-harness's `{opts['metric']}` per sample (--log_samples{where})"
    data = X.study_data(df, name, opts["baseline"], primary, metric)
    out = write_report(name, data, Path(opts.get("out", f"reports/{name}")), opts["baseline"], alpha, sesoi)
    print(
        f"baseline {opts['baseline']}: {df['arm'].nunique() - 1} arm(s) compared over {df['seed'].nunique()} seed(s) x {df['item'].nunique()} item(s)"
    )
    for line in json.loads((out / "verdict.json").read_text(encoding="utf-8"))["lines"]:
        print(f"  - {line}")
    print(f"report: {out}/report.md (and report.html)")
    return str(out)


def _fraction(opts: dict[str, str], key: str, default: float) -> float:
    try:
        value = float(opts.get(key, default))
    except ValueError:
        raise ConfigError(key, opts[key], "must be a number between 0 and 1") from None
    if not 0 < value < 1:
        raise ConfigError(key, opts[key], "must be a number between 0 and 1")
    return value
