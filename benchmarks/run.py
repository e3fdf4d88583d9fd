"""All of ablate's performance measurements in one run, as side-by-side ratios.

    python -m benchmarks run --quick      # the same measurements, smaller: under 10 minutes on 2 CPU cores
    python -m benchmarks run              # the full run (SmolLM2 throughput and pruning: about an hour here)

Writes ``benchmarks/results/<date>.json`` (every run, every setting, the environment) and
``<date>.md`` (the tables the README quotes). Every figure is a ratio of two things measured in
this one process with their runs interleaved, and each throughput figure is the median of at
least 3 repeats: the machines are shared, so absolute seconds mean little and nothing here is a
test. ``benchmarks/gpu.py`` measures items 1, 2 and 4 on CUDA.

1. **Trainer throughput** against peft + ``Trainer`` (and with ``group_by_length``), in the
   precision a user picks here, on generated long-tailed lengths and on ``dates``
   (``throughput.py``). Target: >= 1.3x real tokens/s, held-out losses alike.
2. **Study overhead**: study wall time / the time its trials took (``gpu.study_overhead``).
   Target: <= 1.10.
3. **Pruning**: search training steps with the median pruner / without, same sampler seed.
   Target: <= 0.5 with the same best arm.
4. **QLoRA memory**: NF4 (double quant) / bf16 weight bytes, linear layers and whole model, and
   the training-step peak (``gpu.qlora_memory``). Target: <= 0.30.
5. **Component overhead**: step time and peak memory of each LoRA+X against LoRA alone.
6. **Scaling**: step time against sequence length and model size, study time against trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ablate.components import build_configs
from ablate.components.stack import attach
from ablate.data.tokenize import Encoded, make_batches
from ablate.models import load_base
from ablate.run import PeakMemory, seed_everything
from ablate.schema import TrainConfig
from ablate.train import train
from benchmarks import gpu
from benchmarks import throughput as tp

CPU = torch.device("cpu")
ARMS = ("lora", "lora+adapter", "lora+prefix", "lora+prompt")


@dataclasses.dataclass(frozen=True)
class Sizes:
    throughput_model: str
    throughput_steps: int
    rounds: int
    study_model: str
    study_steps: int
    study_trials: int
    pruning_trials: int
    component_model: str
    component_steps: int
    scaling_models: tuple[str, ...]
    scaling_steps: int


QUICK = Sizes("mid", 10, 3, "tiny", 12, 6, 8, "mid", 6, ("tiny", "mid"), 4)
FULL = Sizes("smollm2", 30, 3, "mid", 30, 8, 8, "smollm2", 10, ("tiny", "mid", "smollm2"), 6)
#: every item on the tiny model, one round, a few steps: the code path in seconds, no figure to quote
SMOKE = Sizes("tiny", 3, 1, "tiny", 4, 2, 2, "tiny", 3, ("tiny",), 3)


# --------------------------------------------------------------------------- 1. throughput


def throughput(sizes: Sizes) -> dict[str, Any]:
    out = {}
    for data in ("longtail", "dates"):
        setup, info = tp.build_setup(
            model=sizes.throughput_model, data=data, device=CPU, steps=sizes.throughput_steps, batch_size=8,
            n_train=(40 if sizes is SMOKE else 1000) if data == "longtail" else (40 if sizes is SMOKE else None),
        )  # fmt: skip
        sides = tp.SIDES if data == "longtail" else tp.SIDES[:2]
        print(f"1. throughput, {sizes.throughput_model} on {data}: {info}", file=sys.stderr)
        out[data] = {
            "data": info,
            "precision": setup.precision,
            **tp.summarise(tp.measure(setup, sizes.rounds, sides), sides),
        }
    return out


# --------------------------------------------------------------------------- 3. pruning


def pruning(sizes: Sizes) -> dict[str, Any]:
    """The same two-arm search with the default pruner (percentile), the old one (median) and none:
    training steps and best arm. ``benchmarks/pruning.py`` replays more policies, Hyperband among them."""
    out: dict[str, Any] = {}
    steps = sizes.study_steps
    for pruner in ("percentile", "median", "none"):
        overrides = [
            *gpu.study_overrides(sizes.study_model, "none", steps, 8),
            "study.arms=[lora,lora+adapter]",
            f"study.pruner={pruner}",
            f"study.n_trials={sizes.pruning_trials}",
            "study.seeds=1",
            f"train.eval_every={max(1, steps // 4)}",
        ]
        print(f"3. pruning: {pruner}", file=sys.stderr)
        probe = gpu.run_study(overrides)
        best = probe["best_values"]
        out[pruner] = {
            "search_steps": probe["search_steps"],
            "wall_s": probe["wall_s"],
            "best_values": best,
            "best_arm": min(best, key=best.get) if best else None,
            "overrides": overrides,
        }
    out["ratio_steps"] = out["percentile"]["search_steps"] / out["none"]["search_steps"]
    out["same_best_arm"] = out["percentile"]["best_arm"] == out["none"]["best_arm"]
    out["median_ratio_steps"] = out["median"]["search_steps"] / out["none"]["search_steps"]
    out["median_same_best_arm"] = out["median"]["best_arm"] == out["none"]["best_arm"]
    return out


# --------------------------------------------------------------------------- 5. component overhead


def components(sizes: Sizes) -> dict[str, Any]:
    """Steady-state step time and peak memory of each arm on one base, interleaved over rounds."""
    setup, _ = tp.build_setup(
        model=sizes.component_model, data="dates", device=CPU, steps=sizes.component_steps, batch_size=8
    )
    base = load_base(setup.model_cfg, setup.quant, CPU)
    fields = gpu.compose(["model=tiny"])["peft"]  # every component's defaults, as composed
    rows: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    print(f"5. component overhead on {sizes.component_model}", file=sys.stderr)
    for _ in range(sizes.rounds):
        for arm in ARMS:
            names = arm.split("+")
            cfgs = build_configs(tuple(names), {n: fields[n] for n in names})
            rows[arm].append(_train_steps(base, cfgs, setup))
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in rows.items()}
    return {
        arm: {
            **m,
            "step_ratio": m["step_s"] / med["lora"]["step_s"],
            "peak_ratio": m["peak_mb"] / med["lora"]["peak_mb"],
        }
        for arm, m in med.items()
    }


def _train_steps(base: Any, cfgs: Any, setup: tp.Setup) -> dict[str, float]:
    seed_everything(0)
    stack = attach(base.model, cfgs, 128)
    pad = base.tokenizer.pad_token_id
    cfg = TrainConfig(
        steps=setup.steps,
        batch_size=setup.batch_size,
        eval_every=setup.steps,
        precision=setup.precision,
        progress=False,
    )
    marks: list[float] = []
    tp.release_memory()
    try:
        with PeakMemory(CPU) as mem:
            train(
                base.model, stack,
                lambda e: make_batches(setup.examples, setup.batch_size, shuffle=True, seed=e, pad_id=pad),
                cfg, CPU, on_log=lambda s, r: marks.append(time.perf_counter()) if "train_loss" in r else None,
            )  # fmt: skip
        trainable = sum(stack.num_parameters().values())
    finally:
        stack.detach()
    return {
        "step_s": (marks[-1] - marks[0]) / (len(marks) - 1),
        "peak_mb": mem.peak_bytes / 2**20,
        "trainable": trainable,
    }


# --------------------------------------------------------------------------- attention kernel


def attention(sizes: Sizes) -> dict[str, Any]:
    """A LoRA step with sdpa against eager attention at 43/128/256/512 tokens (batches of 8 with one
    padded row, as length-grouped real batches have, so the kernels see a mask), interleaved, the
    faster of the rounds: is eager worth choosing by device and length (``model.attn_implementation``)?"""
    cfg = tp.model_config(sizes.component_model)
    base = load_base(cfg, tp.QuantConfig(), CPU)
    lora = build_configs(("lora",), {"lora": {"targets": "all-linear"}})
    out: dict[str, Any] = {"model": sizes.component_model, "lengths": {}}
    for length in (43, 128) if sizes is SMOKE else (43, 128, 256, 512):
        full = _fixed_length(length, base.tokenizer.vocab_size, 64)
        examples = [Encoded(e.input_ids[:-1], e.labels[:-1]) if i % 2 else e for i, e in enumerate(full)]
        setup = tp.Setup(cfg, tp.QuantConfig(), CPU, tp.user_precision(CPU), examples, examples[:8],
                         sizes.component_steps, 8, 1e-3, 0)  # fmt: skip
        runs: dict[str, list[dict[str, float]]] = {"sdpa": [], "eager": []}
        for _ in range(sizes.rounds):
            for kernel in runs:
                base.model.config._attn_implementation = kernel
                runs[kernel].append(_train_steps(base, lora, setup))
        best = {k: min(r["step_s"] for r in v) for k, v in runs.items()}
        peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
        out["lengths"][length] = {
            "step_s": best,
            "peak_mb": peak,
            "eager_over_sdpa": best["eager"] / best["sdpa"],
            "peak_eager_over_sdpa": peak["eager"] / peak["sdpa"],
        }
        print(
            f"attention at {length} tokens: eager / sdpa {best['eager'] / best['sdpa']:.2f}", file=sys.stderr
        )
    base.model.config._attn_implementation = "sdpa"
    return out


# --------------------------------------------------------------------------- 6. scaling


def scaling(sizes: Sizes) -> dict[str, Any]:
    """Step time against sequence length (128/256/512, fixed-length examples) and model size."""
    out: dict[str, Any] = {"length": {}, "model": {}, "study_trials": {}}
    lora = build_configs(("lora",), {"lora": {"targets": "all-linear"}})
    for model in sizes.scaling_models:  # lengths on "mid", models at length 128
        cfg = tp.model_config(model)
        base = load_base(cfg, tp.QuantConfig(), CPU)
        for length in (128, 256, 512) if model == "mid" else (128,):
            examples = _fixed_length(length, base.tokenizer.vocab_size, 64)
            setup = tp.Setup(cfg, tp.QuantConfig(), CPU, tp.user_precision(CPU), examples, examples[:8],
                             sizes.scaling_steps, 8, 1e-3, 0)  # fmt: skip
            r = _train_steps(base, lora, setup)
            print(f"6. scaling {model} length {length}: {r['step_s']:.3f} s/step", file=sys.stderr)
            if model == "mid":
                out["length"][f"{model}@{length}"] = r
            if length == 128:
                out["model"][model] = {**r, "params": sum(p.numel() for p in base.model.parameters())}
        del base
    for n in (2, 4) if sizes is not SMOKE else (2,):
        probe = gpu.run_study(
            [
                *gpu.study_overrides("tiny", "none", 6, 8),
                "study.arms=[lora]",
                "study.pruner=none",
                f"study.n_trials={n}",
                "study.seeds=1",
            ]  # fmt: skip
        )
        out["study_trials"][n] = probe["wall_s"]
    return out


def _fixed_length(length: int, vocab: int, n: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Encoded(ids, [-100] * (length - 16) + ids[-16:]))
    return out


# --------------------------------------------------------------------------- report


def markdown(r: dict[str, Any]) -> list[str]:
    env = r["environment"]
    lines = [
        f"## Benchmarks ({r['mode']}), {r['date']}",
        "",
        f"`{r['command']}`; {env['cpu_count']} CPUs, {env['threads']} torch threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}; load average {env['loadavg_1min']} at the start. "
        "Ratios of runs interleaved in this one process; medians of the rounds.",
        "",
        "| # | measurement | figure | target | met |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    rows = []
    t = r.get("throughput")
    if t:
        for data, x in t.items():
            for peer, ratio in x["ratios"].items():
                rows.append(
                    (
                        1,
                        f"real tokens/s, ablate / {peer}, {data} ({x['precision']})",
                        f"{ratio['tokens_per_s']:.2f}x",
                        ">= 1.3x",
                        ratio["tokens_per_s"] >= 1.3,
                    )
                )
    s = r.get("study_overhead")
    if s:
        rows.append(
            (
                2,
                f"study wall / its trials' time ({s['trials']} trials)",
                f"{s['ratio']:.3f}",
                "<= 1.10",
                s["ratio"] <= 1.10,
            )
        )
    p = r.get("pruning")
    if p:
        rows.append(
            (
                3,
                "search steps, percentile pruner (default) / none"
                + ("" if p["same_best_arm"] else " (best arm differs)"),
                f"{p['ratio_steps']:.2f}",
                "<= 0.5, same best arm",
                p["ratio_steps"] <= 0.5 and p["same_best_arm"],
            )
        )
        if "median_ratio_steps" in p:
            rows.append(
                (
                    3,
                    "search steps, median pruner / none"
                    + ("" if p["median_same_best_arm"] else " (best arm differs)"),
                    f"{p['median_ratio_steps']:.2f}",
                    "info",
                    None,
                )
            )
    m = r.get("qlora_memory")
    if m:
        rows.append(
            (
                4,
                "NF4 / bf16 weight bytes, linear layers",
                f"{m['ratio_linear']:.3f}",
                "<= 0.30",
                m["ratio_linear"] <= 0.30,
            )
        )
        rows.append(
            (
                4,
                "NF4 / bf16 weight bytes, whole model",
                f"{m['ratio_total']:.3f}",
                "<= 0.30",
                m["ratio_total"] <= 0.30,
            )
        )
        rows.append(
            (4, "NF4 / bf16 training-step peak (process RSS)", f"{m['ratio_train_peak']:.3f}", "info", None)
        )
    c = r.get("components")
    if c:
        for arm, x in c.items():
            if arm != "lora":
                rows.append(
                    (
                        5,
                        f"{arm} / lora: step time, peak memory",
                        f"{x['step_ratio']:.2f}, {x['peak_ratio']:.2f}",
                        "info",
                        None,
                    )
                )
    for n, name, fig, target, met in rows:
        lines.append(
            f"| {n} | {name} | {fig} | {target} | {'' if met is None else ('yes' if met else 'no')} |"
        )
    if t:
        for data, x in t.items():
            lines += ["", f"### 1. Throughput on {data} ({x['data']['n_train']} examples, median length "
                      f"{x['data']['length_median']}, p95 {x['data']['length_p95']}, max {x['data']['length_max']})", "", *tp.table(x)]  # fmt: skip
    if m:
        lines += ["", "### 4. QLoRA memory", ""]
        lines += [f"- {k}: weights {v['weight_bytes']['linear'] / 1e6:.1f} MB linear, {v['weight_bytes']['total'] / 1e6:.1f} MB whole ({v['dtype']}); training-step peak RSS {v['train_peak_bytes'] / 2**20:.0f} MB" for k, v in m.items() if isinstance(v, dict)]  # fmt: skip
    a = r.get("attention")
    if a:
        lines += ["", f"### Attention kernel ({a['model']}, LoRA step, batch 8 with padding; "
                  "`model.attn_implementation`, sdpa by default)", "",
                  "| tokens | sdpa s/step | eager s/step | eager / sdpa time | eager / sdpa peak memory |",
                  "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        lines += [f"| {n} | {x['step_s']['sdpa']:.3f} | {x['step_s']['eager']:.3f} | {x['eager_over_sdpa']:.2f} "
                  f"| {x['peak_eager_over_sdpa']:.2f} |" for n, x in a["lengths"].items()]  # fmt: skip
    prof = r.get("profile")
    if prof:
        lines += [
            "",
            "### Where a step's time goes (torch.profiler; top operators in results/profile-*.txt)",
            "",
        ]
        lines += [f"- {side}: {x['wall_per_step_s']:.3f} s per step" for side, x in prof.items()]
    sc = r.get("scaling")
    if sc:
        lines += ["", "### 6. Scaling (s per optimizer step, batch 8, LoRA all-linear)", ""]
        lines += [f"- {k}: {v['step_s']:.3f} s/step" for k, v in sc["length"].items()]
        lines += [
            f"- {k} ({v['params'] / 1e6:.1f}M params): {v['step_s']:.3f} s/step"
            for k, v in sc["model"].items()
            if "params" in v
        ]
        lines += [f"- study of {n} trials (+1 seed), tiny: {w:.1f} s" for n, w in sc["study_trials"].items()]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ablate's benchmarks: ratios measured side by side")
    parser.add_argument("--quick", action="store_true", help="smaller models and fewer steps: < 10 min here")
    parser.add_argument(
        "--smoke", action="store_true", help="every item on the tiny model: seconds, no figures"
    )
    parser.add_argument(
        "--only", default="throughput,study,pruning,memory,components,attention,scaling,profile"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = set(args.only.split(","))
    date = datetime.now(UTC)
    results: dict[str, Any] = {
        "benchmark": "run",
        "mode": mode,
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks run " + " ".join(sys.argv[1:] if argv is None else argv),
        "sizes": dataclasses.asdict(sizes),
        "environment": tp.environment(CPU),
    }
    stem = args.out_dir / (date.strftime("%Y-%m-%d") + ("" if mode == "full" else f"-{mode}"))
    started = time.perf_counter()

    def flush() -> None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results["total_s"] = time.perf_counter() - started
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text("\n".join(markdown(results)) + "\n")

    steps = {
        "throughput": lambda: throughput(sizes),
        "study_overhead": lambda: gpu.study_overhead(sizes.study_model, sizes.study_trials, 2, sizes.study_steps, CPU, "none", 8),
        "pruning": lambda: pruning(sizes),
        "qlora_memory": lambda: gpu.qlora_memory(
            tp.build_setup(model="tiny" if args.smoke else "smollm2", data="dates", device=CPU, steps=3,
                           batch_size=8)[0], 3
        ),
        "components": lambda: components(sizes),
        "attention": lambda: attention(sizes),
        "profile": lambda: gpu.profile_sides(
            tp.build_setup(model=sizes.throughput_model, data="longtail", device=CPU, steps=4, batch_size=8,
                           n_train=40 if args.smoke else 200)[0],
            args.out_dir,
            active=3,
        ),
        "scaling": lambda: scaling(sizes),
    }  # fmt: skip
    short = {"study_overhead": "study", "qlora_memory": "memory"}
    for key, fn in steps.items():
        if short.get(key, key) in only:
            if key == "qlora_memory":
                print("4. QLoRA memory (SmolLM2)", file=sys.stderr)
            results[key] = fn()
            flush()
    print("\n".join(markdown(results)))
    print(f"wrote {stem}.json and {stem}.md in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0
