"""Does pruning cost the search its winner? Per component, on recorded learning curves.

    python -m benchmarks pruning --model tiny --repeats 3      # minutes
    python -m benchmarks pruning --model smollm2                # budget=quick: about 15 min per repeat here
    python -m benchmarks pruning --smoke                        # the suite: seconds

How it measures. Every arm (LoRA alone, then LoRA with each other component) is searched once
per repeat **without pruning**, each trial validated every ``steps / 6`` steps, with 1.5x the
arm's trial budget B so that a policy that refunds pruned steps has candidates to spend them
on. Then every pruning policy is *replayed* on those recorded curves through Optuna's own pruner
(ask, ``report``, ``should_prune``, tell, as a live study does), looking only at the steps its
validation schedule would have evaluated. Two ways to account for a pruned trial:

- ``slot``: it costs a whole trial of the budget (today's rule): the first B candidates;
- ``steps``: it costs the steps it trained; candidates are taken until B full trials' steps are
  spent (or the recorded candidates run out: said per row).

Per (component, policy, accounting): the share of the B x steps budget spent, how often the
chosen configuration is the one the unpruned search of B trials chose ("same winner"), and the
chosen configuration's final validation objective minus that of the unpruned winner (positive:
worse; a ``steps`` policy can find a better one among the extra candidates).

The replay holds the sequence of candidates fixed: a live TPE search with pruning would propose
differently after a pruned trial. It measures exactly what the pruner throws away among the same
candidates, which is the question "does pruning punish slow starters".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.study.sampling import KEEP_PERCENTILE
from benchmarks import gpu

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ["lora", "lora+adapter", "lora+prefix", "lora+prompt", "lora+ia3"]
EXTRA = 1.5  # candidates recorded per arm, as a multiple of its budget (for the ``steps`` accounting)
LOOKS = 6  # validation points recorded per trial


@dataclass(frozen=True)
class Policy:
    """A pruner and the validation schedule it sees (steps as fractions of the trial's steps)."""

    name: str
    every: float  # look at multiples of every * steps (1: never before the end)
    make: Callable[[int, int], Any]  # (steps, every in steps) -> an Optuna pruner


def _median(warmup: float, startup: int = 2) -> Callable[[int, int], Any]:
    import optuna

    return lambda steps, every: optuna.pruners.MedianPruner(
        n_startup_trials=startup, n_warmup_steps=max(every, round(warmup * steps))
    )


def _percentile(keep: float) -> Callable[[int, int], Any]:
    import optuna

    return lambda steps, every: optuna.pruners.PercentilePruner(
        keep, n_startup_trials=2, n_warmup_steps=every
    )


def _hyperband(steps: int, every: int) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps, reduction_factor=3)


POLICIES = [
    Policy("none", 1.0, lambda s, e: None),
    # the default before 2026-12-07: MedianPruner(n_startup_trials=2, n_warmup_steps=eval_every), 20 of 30
    Policy("median @2/3 (old default)", 2 / 3, _median(2 / 3)),
    Policy("median @1/3,2/3", 1 / 3, _median(1 / 3)),
    Policy("median from 1/2, every 1/6", 1 / 6, _median(1 / 2)),
    # the default since (study.pruner=percentile, ablate.study.sampling.KEEP_PERCENTILE)
    Policy("keep top 75% @1/3,2/3 (default)", 1 / 3, _percentile(KEEP_PERCENTILE)),
    Policy("hyperband, every 1/6", 1 / 6, _hyperband),
]


# --------------------------------------------------------------------------- recording


def overrides(
    model: str, steps: int, sampler_seed: int, smoke: bool, arms: Sequence[str] = ARMS, looks: int = LOOKS
) -> list[str]:
    every = max(1, steps // looks)
    base = gpu.study_overrides(model, "none", steps, 8 if model == "smollm2" else 4)
    if model == "smollm2":  # budget=quick's data sizes (gpu.study_overrides sets 512 / 32 / 64)
        base += ["data.n_train=500"]
    out = [
        *base,
        f"study.arms=[{','.join(arms)}]",
        "study.pruner=none",
        f"train.eval_every={every}",
        f"study.sampler_seed={sampler_seed}",
        f"study.name=pruning{sampler_seed}",
    ]
    if smoke:
        out += ["study.n_trials=3", "data.n_train=32", "data.n_validation=8"]
    return out


def record(
    model: str, steps: int, sampler_seed: int, smoke: bool, arms: Sequence[str] = ARMS, looks: int = LOOKS,
    extra: float = EXTRA,
) -> dict[str, Any]:  # fmt: skip
    """Search every arm without pruning, ``extra`` x its budget; every trial's curve by arm."""
    from optuna.trial import TrialState

    from ablate.study import StudyRunner, records
    from ablate.study.budget import Progress
    from ablate.study.plan import make_plan

    ovr = overrides(model, steps, sampler_seed, smoke, arms, looks)
    plain = gpu.compose(ovr)
    study = plain["study"]
    if not smoke:  # the arm's own budget (study.n_trials=null: per searched field), times EXTRA
        study["trials_per_field"] = study["trials_per_field"] * extra
        study["min_trials"] = math.ceil(study["min_trials"] * extra)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        study["storage"] = f"sqlite:///{tmp}/study.db"
        runner = StudyRunner(make_plan(plain, ovr), echo=lambda line: print("  " + line, file=sys.stderr))
        _, studies = runner.open()
        with records.study_run(runner.tracker, runner.spec.name, runner.lock) as srec:
            runner.search_all(studies, srec, Progress(total=0))
        curves = {}
        for arm, st in studies.items():
            done = [t for t in st.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
            curves[arm] = [
                {
                    "number": t.number,
                    "final": float(t.value),
                    "curve": {int(k): float(v) for k, v in t.intermediate_values.items()},
                }
                for t in sorted(done, key=lambda t: t.number)
            ]
        budgets = {a.name: runner.budget(a) for a in runner.arms}
    if not smoke:  # the budget the arm has without the extra candidates
        budgets = {a: max(1, round(b / extra)) for a, b in budgets.items()}
    return {"curves": curves, "budgets": budgets, "steps": steps, "every": max(1, steps // looks)}


# --------------------------------------------------------------------------- replay


def policy_looks(policy: Policy, steps: int) -> tuple[int, list[int]]:
    """The policy's validation interval and the steps it may prune at (never the last: prune_hook)."""
    every = max(1, round(policy.every * steps))
    return every, list(range(every, steps, every))


def replay(
    trials: list[dict[str, Any]], budget: int, steps: int, policy: Policy, accounting: str
) -> dict[str, Any]:
    """Run ``policy`` over the recorded ``trials`` in order; what the search would have chosen."""
    import optuna

    every, looks = policy_looks(policy, steps)
    pruner = policy.make(steps, every)
    study = optuna.create_study(
        study_name="replay", direction="minimize", pruner=pruner or optuna.pruners.NopPruner()
    )
    spent, complete, pruned, used = 0, [], 0, 0
    limit = budget * steps
    for rec in trials:
        if accounting == "slot" and used >= budget or accounting == "steps" and spent >= limit:
            break
        used += 1
        t = study.ask()
        stopped = None
        for step in looks:
            if step not in rec["curve"]:
                continue
            t.report(rec["curve"][step], step)
            if t.should_prune():
                stopped = step
                break
        if stopped is None:
            study.tell(t, rec["final"])
            complete.append(rec)
            spent += steps
        else:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            pruned += 1
            spent += stopped
    chosen = min(complete, key=lambda r: r["final"]) if complete else None
    return {
        "trials": used,
        "pruned": pruned,
        "spent": spent / limit,
        "chosen": chosen["number"] if chosen else None,
        "chosen_final": chosen["final"] if chosen else math.nan,
        "ran_out": accounting == "steps" and spent < limit and used == len(trials),
    }


def component(arm: str) -> str:
    return arm.split("+", 1)[1] if "+" in arm else arm


def score(recordings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (component, policy, accounting), over every repeat."""
    rows = []
    arms = list(recordings[0]["curves"])
    for arm in arms:
        for policy in POLICIES:
            recorded = (
                set(recordings[0]["curves"][arm][0]["curve"]) if recordings[0]["curves"][arm] else set()
            )
            if not set(policy_looks(policy, recordings[0]["steps"])[1]) <= recorded:
                continue  # the curves were not validated where this policy looks
            for accounting in ("slot",) if policy.name == "none" else ("slot", "steps"):
                per = []
                for rec in recordings:
                    trials, budget, steps = rec["curves"][arm], rec["budgets"][arm], rec["steps"]
                    if not trials:
                        continue
                    ref = replay(trials, budget, steps, POLICIES[0], "slot")
                    got = replay(trials, budget, steps, policy, accounting)
                    per.append((ref, got))
                if not per:
                    continue
                rows.append(
                    {
                        "component": component(arm),
                        "arm": arm,
                        "policy": policy.name,
                        "accounting": accounting,
                        "repeats": len(per),
                        "budget": recordings[0]["budgets"][arm],
                        "spent": sum(g["spent"] for _, g in per) / len(per),
                        "pruned": sum(g["pruned"] for _, g in per) / len(per),
                        "same_winner": sum(g["chosen"] == r["chosen"] for r, g in per) / len(per),
                        "regret": sum(g["chosen_final"] - r["chosen_final"] for r, g in per) / len(per),
                        "ran_out": sum(g["ran_out"] for _, g in per),
                    }
                )
    return rows


def render(res: dict[str, Any]) -> str:
    lines = [
        f"# Pruning: does it cost the search its winner? ({res['model']})",
        "",
        f"`{res['command']}` ({res['date']}, {res['machine']}, {res['seconds']:.0f} s; "
        f"{res['repeats']} repeat(s) of every arm's search, {res['steps']} steps per trial, curves "
        f"validated every {res.get('every', max(1, res['steps'] // LOOKS))} steps). How it is measured: "
        "`benchmarks/pruning.py`.",
        "",
        "Spent: search steps against B full trials. Same winner: the configuration the unpruned search of "
        "B trials chose. Regret: the chosen configuration's final validation "
        f"{res['objective']} minus the unpruned winner's (positive: worse).",
        "",
        "| component | B | policy | pruned trial costs | spent | pruned per search | same winner | regret |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        cost = {"slot": "a whole trial", "steps": "its steps"}[r["accounting"]]
        out = f" ({r['ran_out']} ran out of candidates)" if r["ran_out"] else ""
        lines.append(
            f"| {r['component']} | {r['budget']} | {r['policy']} | {cost}{out} | {100 * r['spent']:.0f}% | "
            f"{r['pruned']:.1f} | {100 * r['same_winner']:.0f}% | {r['regret']:+.4f} |"
        )
    lines += [
        "",
        "Over every component:",
        "",
        "| policy | pruned trial costs | spent | same winner | mean regret |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (policy, accounting), rows in _by_policy(res["rows"]).items():
        cost = {"slot": "a whole trial", "steps": "its steps"}[accounting]
        spent, same, regret = (_weighted(rows, k) for k in ("spent", "same_winner", "regret"))
        lines.append(f"| {policy} | {cost} | {100 * spent:.0f}% | {100 * same:.0f}% | {regret:+.4f} |")
    return "\n".join(lines) + "\n"


def _weighted(rows: list[dict[str, Any]], key: str) -> float:
    """The mean of ``key`` over every repeat of every component."""
    return sum(r[key] * r["repeats"] for r in rows) / sum(r["repeats"] for r in rows)


def _by_policy(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["policy"], r["accounting"]), []).append(r)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--repeats", type=int, default=1, help="independent searches (sampler seeds 0..N-1)")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per trial (tiny 24, smollm2 15: budget=quick)"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to search, comma-separated")
    parser.add_argument("--looks", type=int, default=LOOKS, help="validation passes recorded per trial")
    parser.add_argument(
        "--extra",
        type=float,
        default=EXTRA,
        help="candidates per arm / its budget (1: no 'steps' accounting)",
    )
    parser.add_argument("--smoke", action="store_true", help="the test suite's run: tiny, 3 trials, seconds")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model = "tiny" if args.smoke else args.model
    steps = args.steps or (6 if args.smoke else 15 if model == "smollm2" else 24)
    started = time.perf_counter()
    arms = args.arms.split(",")
    recordings = [
        record(model, steps, k, args.smoke, arms, args.looks, args.extra) for k in range(args.repeats)
    ]
    plain = gpu.compose(overrides(model, steps, 0, args.smoke, arms, args.looks))
    command = "python -m benchmarks pruning " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {
        "model": model,
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "steps": steps,
        "repeats": args.repeats,
        "every": recordings[0]["every"],
        "objective": plain["study"]["objective"],
        "recordings": recordings,
        "rows": score(recordings),
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "pruning-smoke" if args.smoke else f"pruning-{model}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
