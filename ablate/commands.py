"""The commands behind the CLI: plain functions of the composed config.

Each command validates everything first (config, data, model, component
attachment), and only then opens a tracking run, so a user's mistake never
leaves a half-written run behind.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf


def plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train_command(cfg: DictConfig) -> dict[str, float]:
    """``ablate train``: one trial of one arm, recorded as one MLflow run."""
    from ablate.config import TrialConfig
    from ablate.data import load_splits
    from ablate.models import load_base
    from ablate.run import prepare_data, run_trial
    from ablate.tracking import make_tracker

    trial = TrialConfig.from_dict(plain(cfg))
    load_splits(trial.data)  # data mistakes surface before the (slow) model load
    base = load_base(trial.model, trial.quant)
    data = prepare_data(trial.data, base.tokenizer)
    tracker = make_tracker(trial.tracking)
    outcome = run_trial(trial, base, data, tracker, tags={"phase": "train"})
    print(summary(trial.arm_name, trial.quant.method, outcome.metrics, outcome.run_id, trial.tracking.uri))
    return outcome.metrics


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
        lines.append("  knockout test EM  " + ", ".join(f"-{n}: {v:.3f}" for n, v in knock.items()))
    if run_id:
        lines.append(f"  MLflow run {run_id} in {uri}  (browse: mlflow ui --backend-store-uri {uri})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `ablate` command")


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without @hydra.main (tests)
        return []


def study_command(cfg: DictConfig) -> dict[str, Any]:
    """``ablate study=NAME``: search every arm, match, replicate, report; resumable."""
    from ablate.study import StudyRunner

    runner = StudyRunner(plain(cfg), _overrides())
    result = runner.run()
    print(study_summary(runner, result))
    return result


def study_summary(runner: Any, result: dict[str, Any]) -> str:
    import statistics

    from ablate.errors import redact

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
    if result.get("report"):
        lines.append(f"  report: {result['report']}/report.md (and report.html)")
    if runner.tracking.backend == "mlflow":
        lines.append(
            f"  runs: mlflow ui --backend-store-uri {runner.tracking.uri}   (experiment {runner.spec.name})"
        )
    return "\n".join(lines)


def report_command(cfg: DictConfig) -> str:
    """``ablate report study=NAME``: rebuild reports/NAME/ from what was recorded."""
    from pathlib import Path

    from ablate.report import build_report
    from ablate.study import StudyConfig, check_storage

    spec = StudyConfig.from_dict(plain(cfg).get("study") or {})
    check_storage(spec.storage_url)  # unreachable or malformed URL: one line, exit 2
    tracking = plain(cfg).get("tracking") or {}
    uri = tracking.get("uri") if tracking.get("backend") == "mlflow" else None
    out = build_report(spec.name, spec.storage_url, uri, Path("reports") / spec.name, baseline=spec.baseline)
    print(f"report: {out}/report.md (and report.html)")
    return str(out)
