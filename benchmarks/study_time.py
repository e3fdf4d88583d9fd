"""Where a finished study's wall time went, from what the study itself recorded.

    python -m benchmarks study-time sqlite:///studies/lora_vs_adapter.db 700.1

The second argument is the study's wall time in seconds (e.g. from ``/usr/bin/time``). Every
complete trial in the storage (all arms, search and replicates) contributes its Optuna duration
and its recorded ``train_seconds`` (the training loop) and ``wall_s`` (training plus evaluation
passes); the rest of the wall time is between trials: loading the base, MLflow, Optuna, the report.
Reads only; works on any finished or interrupted study.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import optuna


def breakdown(storage: str, wall: float) -> dict[str, float]:
    in_trials = train = run = 0.0
    n = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            metrics = t.user_attrs.get("metrics") or {}
            in_trials += (t.datetime_complete - t.datetime_start).total_seconds()
            train += metrics.get("train_seconds", 0.0)
            run += metrics.get("wall_s", 0.0)
            n += 1
    return {
        "trials": n,
        "wall_s": wall,
        "wall_over_trials": wall / in_trials if in_trials else float("nan"),
        "training": train / wall,
        "evaluation": (run - train) / wall,
        "in_trial_other": (in_trials - run) / wall,
        "between_trials": (wall - in_trials) / wall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="the study's Optuna storage URL")
    parser.add_argument("wall_s", type=float, help="the study's wall time in seconds")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    b = breakdown(args.storage, args.wall_s)
    print(
        f"{b['trials']} complete trials, study wall {b['wall_s']:.0f} s, wall / trials {b['wall_over_trials']:.3f}"
    )
    for key in ("training", "evaluation", "in_trial_other", "between_trials"):
        print(f"  {key:15s} {100 * b[key]:5.1f}%")
    return 0
