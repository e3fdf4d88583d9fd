"""Studies: per-arm Optuna searches under one name, a parameter-matched LoRA arm, replication.

The public front; each job lives in its own module:
``config`` (StudyConfig, Arm, parse_arms), ``storage`` (URL checks, lock, orphans),
``sampling`` (sampler, pruner, per-trial seeds), ``budget`` (the ask -> run -> tell loop),
``matching`` (best and matched configurations), ``bench`` (trial configs on one base),
``records`` (MLflow runs), ``runner`` (the phases).

What is recorded (the report reads only this):
- arm study ``NAME/<arm>`` user attrs: ablate_study, arm, components, quant, is_baseline, role
  (baseline | combination | single | matched), factorial, objective, n_trials, startup_trials,
  best_trial, best_config, replicates {seed: metrics}, capacity {k: {seed: metrics}} (with
  study.capacity_levels), interference {seed: {cos, norm_ratio, n_matrices} | None}
  (LoRA+X arms, MLflow only), interrupted_trials; matched-lora also matched_to,
  matched_target_params, matched_params;
- search trials: params ``<component>.<field>``, objective value(s), intermediate values per
  evaluation, user attrs metrics (with base_bytes), mlflow_run_id, reason, worker,
  derived (matched-lora's rank), enqueued_from (the trial started from the baseline's best);
- replicate trials (``NAME/<arm>/replicate``, ``NAME/<arm>/capacity<k>``): param seed, value
  test EM, user attrs metrics (with base_bytes and mlflow_run_id; the baseline's also
  zero_shot/test_em) and items {index, correct, loss} per test item (the baseline's also
  zero_shot_correct and zero_shot_loss: the bare base on the same items);
- MLflow: experiment NAME; study run > arm runs > trial runs (tags ablate.level, arm, role,
  phase, seed, trial_number, state, reason).
"""

from __future__ import annotations

from typing import Any

from ablate.schema import OBJECTIVES, PRUNERS, SAMPLERS, StudyConfig
from ablate.storage import check_storage, open_storage
from ablate.study.budget import Pruned
from ablate.study.config import MATCHED, Arm, parse_arms


def __getattr__(name: str) -> Any:
    # The runner pulls in the training stack (torch); ``ablate report`` only needs the config and
    # the storage checks above, so the runner is imported on first use.
    if name == "StudyRunner":
        from ablate.study.runner import StudyRunner

        return StudyRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MATCHED",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Arm",
    "Pruned",
    "StudyConfig",
    "StudyRunner",
    "check_storage",
    "open_storage",
    "parse_arms",
]
