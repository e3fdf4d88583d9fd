"""Where a replicate's time goes once the test set is realistic: training against its evaluation passes.

A replicate of a study (the best configuration on a new seed, scored on the test split) trains,
validates every ``train.eval_every`` steps (the learning-curve figure), scores the test split per
item (the verdict), and knocks each component out for one more pass (the knockout figure). This
runs one such replicate through ``ablate.run.run_trial`` exactly as the study does (the bare base
is scored once per study, not here), times every evaluation pass by wrapping
``ablate.run.evaluate`` with a timer for that one run (the only thing replaced; it returns what it
returned), then times the knockout passes once more on ``eval.knockout_items`` test items (the
default since issue 25 item 6) with the same components attached afresh: a pass costs the same
whatever their trained values. It also times one test pass of the bare base at a few evaluation
batch sizes.

    python -m benchmarks replication --smoke                       # the suite: seconds
    python -m benchmarks replication --model smollm2 --data sentiment --n-test 872 --steps 30

Evaluation time does not depend on the number of training steps, so the ratio at another step
count is training's measured seconds per step times those steps against the same passes; the
table says which figures are measured and which are that arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ablate.run
from ablate.components import stack as components
from ablate.data.tokenize import make_batches
from ablate.metrics import evaluate
from ablate.models import load_base
from ablate.run import knockout_subset, prepare_data, run_trial
from ablate.schema import TrialConfig
from ablate.tracking import Tracker
from benchmarks import gpu
from benchmarks import throughput as tp

RESULTS = Path(__file__).resolve().parent / "results"
STEPS_AT = (30, 200)  # budget=quick and budget=default train.steps: the ratio at each


def trial_config(model: str, data: str, n_test: int, steps: int, knockout_items: int | None) -> TrialConfig:
    """A LoRA+adapter replicate as a study's replication phase runs it (knockouts on, bare base off)."""
    plain = gpu.compose(
        [
            *(["model=smollm2_135m"] if model == "smollm2" else ["model=tiny"]),
            f"data={data}",
            f"data.n_test={n_test}",
            f"train.steps={steps}",
            "train.progress=false",
            "tracking=none",
        ]
    )
    plain["peft"] = {c: plain["peft"][c] for c in ("lora", "adapter")}
    plain["eval"].update(knockout=True, knockout_items=knockout_items, zero_shot=False, save_components=False)
    return TrialConfig.from_dict(plain)


def measure(model: str, data: str, n_test: int, steps: int, knockout_items: int) -> dict[str, Any]:
    cfg = trial_config(model, data, n_test, steps, None)  # the old way: every knockout on every item
    base = load_base(cfg.model, cfg.quant)
    splits = prepare_data(cfg.data, base.tokenizer)
    passes: list[dict[str, float]] = []
    real = ablate.run.evaluate

    def timed(model_, batches, *args, **kwargs):
        started = time.perf_counter()
        out = real(model_, batches, *args, **kwargs)
        passes.append({"items": out["examples"], "seconds": time.perf_counter() - started})
        return out

    ablate.run.evaluate = timed
    try:
        m = run_trial(cfg, base, splits, Tracker()).metrics
    finally:
        ablate.run.evaluate = real
    n_val, k = len(splits["validation"]), len(cfg.peft)
    val, test, knock_all = passes[: -(1 + k)], passes[-(1 + k)], passes[-k:]
    # The same knockouts on the default subset, on the same components attached afresh (a knockout
    # pass costs the same whatever the trained values): one pass per component, as run_trial does.
    chosen = knockout_subset(len(splits["test"]), knockout_items)
    sub = make_batches([splits["test"][i] for i in chosen], cfg.train.eval_batch_size, shuffle=False, seed=0,
                       pad_id=base.tokenizer.pad_token_id)  # fmt: skip
    stack = components.attach(base.model, cfg.peft, cfg.data.max_length)
    try:
        started = time.perf_counter()
        for name in stack.names:
            with stack.knocked_out([name]):
                evaluate(base.model, sub, base.device)
        knock_sub = time.perf_counter() - started
    finally:
        stack.detach()
    sizes = {}
    for size in (16, 32, 64):
        batches = make_batches(
            splits["test"], size, shuffle=False, seed=0, pad_id=base.tokenizer.pad_token_id
        )
        started = time.perf_counter()
        evaluate(base.model, batches, base.device)
        sizes[size] = time.perf_counter() - started
    per_step = m["train_seconds"] / m["steps"]
    val_s = sum(p["seconds"] for p in val)
    before = val_s + test["seconds"] + sum(p["seconds"] for p in knock_all)
    after = val_s + test["seconds"] + knock_sub
    return {
        "model": model,
        "data": data,
        "n_test": len(splits["test"]),
        "n_validation": n_val,
        "steps": int(m["steps"]),
        "train_seconds": m["train_seconds"],
        "wall_s": m["wall_s"],
        "per_step_s": per_step,
        "validation_passes": val,
        "test_pass": test,
        "knockout_passes_all_items": knock_all,
        "knockout_items": len(chosen),
        "knockout_passes_subset_s": knock_sub,
        "eval_before_s": before,
        "eval_after_s": after,
        "test_pass_by_eval_batch_size_s": sizes,
        "ratio": {
            str(n): {
                "before": before / (per_step * n),
                "after": after / (per_step * n),
                "measured": n == steps,
            }
            for n in sorted({steps, *STEPS_AT})
        },
    }


def render(r: dict[str, Any], seconds: float, command: str) -> str:
    lines = [
        f"# Replication: evaluation against training ({r['model']}, {r['data']}, {r['n_test']} test items)",
        "",
        f"`{command}` ({r['date']}, {seconds:.0f} s). One LoRA+adapter replicate through `run_trial` as a study "
        f"runs it: {r['steps']} steps ({r['per_step_s']:.2f} s/step, {r['train_seconds']:.0f} s), validation "
        f"every `train.eval_every` on {r['n_validation']} items, the test split per item, a knockout pass per "
        "component; the bare base is scored once per study and is not here.",
        "",
        "| pass | items | seconds |",
        "| --- | ---: | ---: |",
        *[f"| validation | {p['items']} | {p['seconds']:.1f} |" for p in r["validation_passes"]],
        f"| test (per item) | {r['test_pass']['items']} | {r['test_pass']['seconds']:.1f} |",
        *[
            f"| knockout, every item (before) | {p['items']} | {p['seconds']:.1f} |"
            for p in r["knockout_passes_all_items"]
        ],
        f"| {len(r['knockout_passes_all_items'])} knockouts on `eval.knockout_items` (after) | "
        f"{r['knockout_items']} each | {r['knockout_passes_subset_s']:.1f} |",
        "",
        f"run_trial's own record: `wall_s` {r['wall_s']:.0f} s against `train_seconds` {r['train_seconds']:.0f} s "
        "(knockouts on every item).",
        "",
        "| train steps | evaluation / training, before | after | target | measured or arithmetic |",
        "| ---: | ---: | ---: | ---: | --- |",
        *[
            f"| {n} | {x['before']:.2f} | {x['after']:.2f} | <= 0.5 | "
            f"{'measured' if x['measured'] else 'evaluation measured, training at the measured s/step'} |"
            for n, x in r["ratio"].items()
        ],  # fmt: skip
        "",
        "Test pass by evaluation batch size (seconds, the bare base): "
        + ", ".join(f"{k}: {v:.1f}" for k, v in r["test_pass_by_eval_batch_size_s"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks replication", description=__doc__)
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    ap.add_argument("--data", default="sentiment")
    ap.add_argument("--n-test", type=int, default=872)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--knockout-items", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 40 test items: seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.n_test, args.steps, args.knockout_items = "tiny", 40, 4, 16
    started = time.perf_counter()
    r = measure(args.model, args.data, args.n_test, args.steps, args.knockout_items)
    r["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    r["environment"] = tp.environment(tp.torch.device("cpu"))
    seconds = time.perf_counter() - started
    stem = "replication-smoke" if args.smoke else f"replication-{args.model}-{args.data}"
    command = "python -m benchmarks replication " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    text = render(r, seconds, command)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0
