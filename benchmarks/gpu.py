"""The GPU benchmark: trainer throughput, study overhead and QLoRA memory on CUDA, with MFU.

    python -m benchmarks gpu                      # on a CUDA machine: llama1b, about 5 minutes
    python -m benchmarks gpu --device cpu --model tiny --quick --out-dir /tmp/gpu   # dry run of the code

The model is a random-init Llama of TinyLlama-1.1B's shape (``benchmarks/throughput.py``
``SHAPES["llama1b"]``; no download: built once from a config and saved as safetensors). Its
vocabulary is the byte-level test tokenizer's (261 ids), so embeddings and the lm_head are a
negligible share of the compute and of the weights; the figures below are about the decoder.

1. **Trainer throughput** (QLoRA: NF4 double-quant base, bf16 compute): ablate's loop against
   ``peft.get_peft_model`` + ``transformers.Trainer`` with ``bf16=True``, and the same with
   ``group_by_length``, interleaved, median of ``--rounds``; on ``longtail`` (log-normal lengths)
   and ``dates``. Real (non-pad) tokens/s.
2. **Study overhead**: the wall time of an N-trial study (one LoRA arm, no pruning, no
   tracking, SQLite storage) over the time its trials took inside ``run_trial``; the difference
   is everything a study adds: loading and quantising the base, tokenising, Optuna, storage.
3. **QLoRA memory**: the base's weight bytes at NF4 (double quantisation; the 4-bit block scales
   counted) over bf16, for the quantised linear layers and for the whole model, and the peak
   memory of a LoRA training step on each.

**MFU** (model-FLOPs utilisation) of each training measurement: useful FLOPs per second over the
GPU's bf16 dense peak, both the datasheet's and the one measured here on an 8192^3 bf16 matmul.
Useful FLOPs per real token: 4 x frozen linear weights (forward, and the input gradient in the
backward; frozen weights get no weight gradient) + 6 x trainable weights + 12 x layers x hidden x
the token's context (attention score and value products, forward and backward, causal pairs
only). Padding, recomputation and 4-bit dequantisation are not useful FLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ablate.components.lora import LoraConfig
from ablate.components.stack import attach
from ablate.data.tokenize import make_batches
from ablate.models import load_base, weight_bytes
from ablate.run import PeakMemory, seed_everything
from ablate.schema import QuantConfig, TrainConfig
from ablate.train import train
from benchmarks import throughput as tp

#: Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts, no sparsity), TFLOP/s.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


# --------------------------------------------------------------------------- FLOPs and peaks


def measured_peak_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """bf16 matmul rate measured here: the ceiling MFU is also quoted against."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def datasheet_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(base_model: torch.nn.Module, trainable: int, lengths: Sequence[int]) -> float:
    """Useful training FLOPs per real token (see the module docstring)."""
    cfg = base_model.config
    frozen = sum(
        m.in_features * m.out_features
        for name, m in base_model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )
    # A token at position i attends to i+1 positions; averaged over the real tokens of the data.
    context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * context
    return 4 * frozen + 6 * trainable + attention


def mfu(tokens_per_s: float, per_token: float, peak_tflops: float | None) -> float | None:
    return tokens_per_s * per_token / (peak_tflops * 1e12) if peak_tflops else None


# --------------------------------------------------------------------------- where the time goes


def profile_sides(setup: tp.Setup, out_dir: Path, active: int = 6) -> dict[str, Any]:
    """torch.profiler over ``active`` steady-state steps of each side: the device's busy time per
    step against the wall time per step (a loop whose device is idle half the time is bound by
    the host: Python, kernel launches, synchronisation), and the top operators, written to
    ``profile-<side>.txt``."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    steps = 4 + active + 1
    out: dict[str, Any] = {}
    for side in ("ablate", "peft+Trainer"):
        tp.release_memory()
        prof = profile(activities=activities, schedule=schedule(wait=2, warmup=2, active=active))
        marks: list[float] = []
        tp.STEP_HOOKS[:] = [prof.step, lambda marks=marks: marks.append(time.perf_counter())]
        try:
            with prof:
                tp.RUNNERS[side](dataclasses.replace(setup, steps=steps, held_out=setup.held_out[:8]), 0)
        finally:
            tp.STEP_HOOKS.clear()
        events = prof.key_averages()
        device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
        wall_s = (marks[4 + active - 1] - marks[3]) / active  # the steps the profiler was active in
        sort = "self_cuda_time_total" if setup.device.type == "cuda" else "self_cpu_time_total"
        name = side.replace("+", "_")
        (out_dir / f"profile-{name}.txt").write_text(
            f"{side}: {active} steps\n\n"
            + events.table(sort_by=sort, row_limit=25)
            + "\n\n"
            + events.table(sort_by="self_cpu_time_total", row_limit=15)
        )
        out[side] = {
            "wall_per_step_s": wall_s,
            "device_busy_per_step_s": device_us / 1e6 / active,
            "device_busy_fraction": device_us / 1e6 / active / wall_s,
            "launches_per_step": sum(
                e.count
                for e in events
                if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
            )
            / active,
        }
        print(f"  profile {side}: {out[side]}", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- 3. QLoRA memory


def qlora_memory(setup: tp.Setup, steps: int) -> dict[str, Any]:
    """Weight bytes and a LoRA training step's peak on a bf16 base and on its NF4 twin."""
    out: dict[str, Any] = {}
    # The reference is the bf16 base whatever the device; the NF4 base's other weights take
    # load_base's choice (its compute dtype where that is bf16).
    for name, quant, dtype in (("bf16", "none", "bfloat16"), ("nf4", "nf4", "auto")):
        tp.release_memory()
        cfg = QuantConfig.from_dict({"method": quant, "double_quant": True})
        base = load_base(setup.model_cfg.model_copy(update={"dtype": dtype}), cfg, setup.device)
        weights = weight_bytes(base.model)
        seed_everything(0)
        lora = LoraConfig.from_dict(
            {"r": tp.LORA_R, "alpha": tp.LORA_ALPHA, "dropout": 0.0, "targets": list(tp.TARGETS)}
        )
        stack = attach(base.model, {"lora": lora})
        pad = base.tokenizer.pad_token_id
        train_cfg = TrainConfig(
            steps=steps,
            batch_size=setup.batch_size,
            eval_every=steps,
            precision=setup.precision,
            progress=False,
        )
        tp.release_memory()
        with PeakMemory(setup.device) as mem:
            result = train(
                base.model,
                stack,
                lambda e, pad=pad: make_batches(
                    setup.examples, setup.batch_size, shuffle=True, seed=e, pad_id=pad
                ),
                train_cfg,
                setup.device,
            )
        out[name] = {
            "weight_bytes": weights,
            "dtype": str(base.dtype),
            "train_peak_bytes": mem.peak_bytes,
            "peak_kind": mem.kind,
            "tokens_per_s": result.tokens_per_s,
            "step_s": result.step_time_s,
            "trainable": sum(stack.num_parameters().values()),
        }
        stack.detach()
        del base, stack
    b, q = out["bf16"]["weight_bytes"], out["nf4"]["weight_bytes"]
    out["ratio_linear"] = q["linear"] / b["linear"]
    out["ratio_total"] = q["total"] / b["total"]
    out["ratio_train_peak"] = out["nf4"]["train_peak_bytes"] / out["bf16"]["train_peak_bytes"]
    return out


# --------------------------------------------------------------------------- 2. study overhead


def study_overhead(
    model: str,
    n_trials: int,
    seeds: int,
    steps: int,
    device: torch.device,
    quant: str = "nf4",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Wall time of a study / the time its trials spent inside ``run_trial``."""
    overrides = [
        *study_overrides(model, quant, steps, batch_size),
        "study.arms=[lora]",
        "study.pruner=none",
        f"study.n_trials={n_trials}",
        f"study.seeds={seeds}",
        f"train.eval_every={steps}",
    ]
    probe = run_study(overrides)
    spent = [t for _, t in probe["trials"]]
    return {
        "trials": len(spent),
        "wall_s": probe["wall_s"],
        "trials_s": sum(spent),
        "trial_median_s": statistics.median(spent),
        "ratio": probe["wall_s"] / sum(spent),
        "ratio_vs_n_times_median": probe["wall_s"] / (len(spent) * statistics.median(spent)),
        "overrides": overrides,
    }


def study_overrides(model: str, quant: str, steps: int, batch_size: int) -> list[str]:
    """A small study of one model, no tracking, no report, no knockouts: the study machinery alone."""
    shape = json.dumps(tp.SHAPES.get(model, {})).replace('"', "")
    return [
        "study=lora_vs_adapter",
        *(["model=smollm2_135m"] if model == "smollm2" else ["model=tiny", f"model.tiny={shape}"]),
        "model.dtype=auto",
        f"quant={quant}",
        "study.matched=false",
        "study.factorial=false",
        "study.report=false",
        f"study.train_steps={steps}",
        f"train.batch_size={batch_size}",
        "train.progress=false",
        "data.n_train=512",
        "data.n_validation=32",
        "data.n_test=64",
        "tracking.backend=none",
        "eval.knockout=false",
        "eval.zero_shot=false",
        "eval.save_components=false",
        "study.interference=false",
    ]


def run_study(overrides: list[str]) -> dict[str, Any]:
    """Run a study in this process on a throw-away storage and read back what its trials recorded:
    every run's ``wall_s`` (``run_trial``'s own clock; a trial stopped before it recorded metrics
    counts Optuna's duration) by phase, and the training steps of the search (a pruned trial:
    the step of the evaluation that stopped it)."""
    from optuna.trial import TrialState

    from ablate.study import StudyRunner
    from ablate.study.plan import make_plan

    plain = compose(overrides)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        plain["study"]["storage"] = f"sqlite:///{tmp}/study.db"
        started = time.perf_counter()
        result = StudyRunner(
            make_plan(plain, overrides), echo=lambda line: print("  " + line, file=sys.stderr)
        ).run()
        wall = time.perf_counter() - started
        trials: list[tuple[str, float]] = []
        search_steps = 0
        for study in result["studies"].values():
            for t in study.get_trials(deepcopy=False):
                m = t.user_attrs.get("metrics") or {}
                seconds = m.get("wall_s", t.duration.total_seconds() if t.duration else 0.0)
                trials.append(("validation", float(seconds)))
                if t.state == TrialState.COMPLETE:
                    search_steps += int(m["steps"])
                elif t.intermediate_values:
                    search_steps += max(t.intermediate_values)
            trials += [
                ("test", float(r["wall_s"])) for r in (study.user_attrs.get("replicates") or {}).values()
            ]
        best = {
            name: study.best_value
            for name, study in result["studies"].items()
            if any(t.state.name == "COMPLETE" for t in study.trials)
        }
    return {"wall_s": wall, "trials": trials, "search_steps": search_steps, "best_values": best}


def compose(overrides: list[str]) -> dict[str, Any]:
    """The config ``ablate study ...`` would compose (Hydra's compose API, no @hydra.main)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    peft = "peft=[" + ",".join(p.stem for p in sorted((tp.ROOT / "conf" / "peft").glob("*.yaml"))) + "]"
    with initialize_config_dir(str(tp.ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[peft, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="GPU benchmark: throughput, study overhead, QLoRA memory, MFU"
    )
    parser.add_argument("--model", choices=tp.MODELS, default="llama1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps and trials (a dry run of the code)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the whole path on the CPU and the tiny model: seconds, no figures",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--only", default="throughput,profile,memory,study,packing", help="comma-separated items to run"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.model, args.rounds, args.batch_size, args.quick = "cpu", "tiny", 1, 4, True
    device = torch.device(args.device)
    steps = args.steps or (3 if args.smoke else 6 if args.quick else 25)
    n_train = (lambda n: 32) if args.smoke else (lambda n: n)
    only = set(args.only.split(","))
    started = time.perf_counter()
    peak = {"measured": measured_peak_tflops(device), "datasheet": datasheet_tflops(device)}
    print(f"bf16 peak TFLOP/s: measured {peak['measured']}, datasheet {peak['datasheet']}", file=sys.stderr)
    results: dict[str, Any] = {
        "benchmark": "gpu",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": tp.environment(device),
        "model": args.model,
        "shape": tp.SHAPES.get(args.model),
        "peak_tflops": peak,
    }

    def flush() -> None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out_dir / "gpu.md").write_text("\n".join(markdown(results)) + "\n")

    for data in ("longtail", "dates"):
        if "throughput" not in only:
            break
        setup, info = tp.build_setup(
            model=args.model, data=data, device=device, quant="nf4", steps=steps,
            batch_size=args.batch_size, n_train=n_train(1024) if data == "longtail" else None,
        )  # fmt: skip
        sides = tp.SIDES if data == "longtail" else tp.SIDES[:2]
        print(f"throughput on {data} ({info})", file=sys.stderr)
        summary = tp.summarise(tp.measure(setup, args.rounds, sides), sides)
        per_token = per_token_flops(setup, summary)
        for row in summary["sides"].values():
            row["mfu_measured"] = mfu(row["tokens_per_s"], per_token, peak["measured"])
            row["mfu_datasheet"] = mfu(row["tokens_per_s"], per_token, peak["datasheet"])
        results[f"throughput_{data}"] = {"data": info, "flops_per_token": per_token, **summary}
        flush()
    if "profile" in only:
        setup, _ = tp.build_setup(
            model=args.model, data="longtail", device=device, quant="nf4", steps=steps,
            batch_size=args.batch_size, n_train=n_train(1024),
        )  # fmt: skip
        print("profile", file=sys.stderr)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results["profile"] = profile_sides(setup, args.out_dir)
        flush()
    if "memory" in only:
        setup, info = tp.build_setup(
            model=args.model, data="longtail", device=device, quant="nf4", steps=steps,
            batch_size=args.batch_size, n_train=n_train(512),
        )  # fmt: skip
        print("QLoRA memory", file=sys.stderr)
        memory = qlora_memory(setup, max(3, steps // 3))
        lengths = [len(e.input_ids) for e in setup.examples]
        for name in ("bf16", "nf4"):
            base_model = load_meta(setup)
            per_token = flops_per_token(base_model, memory[name]["trainable"], lengths)
            memory[name]["mfu_measured"] = mfu(memory[name]["tokens_per_s"], per_token, peak["measured"])
            memory[name]["mfu_datasheet"] = mfu(memory[name]["tokens_per_s"], per_token, peak["datasheet"])
        results["qlora_memory"] = memory
        flush()
    if "study" in only:
        n = 2 if args.smoke else 3 if args.quick else 6
        print(f"study overhead ({n} trials + 2 seeds)", file=sys.stderr)
        results["study_overhead"] = study_overhead(args.model, n, 2, steps, device)
        flush()
    if "packing" in only:  # issue 25 item 3 on a GPU: K QLoRA search trials in one batch
        from benchmarks import packing

        print("packing trials", file=sys.stderr)
        argv_ = ["--model", args.model, "--device", args.device, "--quant", "nf4", "--data", "longtail",
                 "--batch-size", str(max(1, args.batch_size // 4)), "--steps", str(max(3, steps // 3)),
                 "--rounds", str(args.rounds), "--out", str(args.out_dir)]  # fmt: skip
        packing.main([*argv_, "--k", "1,2"] if args.smoke else argv_)
        written = json.loads((args.out_dir / f"packing-{args.model}-longtail.json").read_text())
        results["packing"] = {"rows": written["rows"], "decision": written["decision"]}
        flush()
    results["total_s"] = time.perf_counter() - started
    flush()
    print("\n".join(markdown(results)))
    return 0


def load_meta(setup: tp.Setup) -> torch.nn.Module:
    """The model's modules on the meta device: shapes for FLOP counts, no memory, no load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tp.resolve(setup.model_cfg))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def per_token_flops(setup: tp.Setup, summary: dict[str, Any]) -> float:
    trainable = summary["sides"]["ablate"]["trainable_params"]
    return flops_per_token(load_meta(setup), trainable, [len(e.input_ids) for e in setup.examples])


def markdown(r: dict[str, Any]) -> list[str]:
    env = r["environment"]
    peak = r["peak_tflops"]
    measured = f"{peak['measured']:.0f}" if peak["measured"] else "n/a"
    lines = [
        f"## GPU benchmark ({r['model']}, {env.get('gpu', env['device'])})",
        "",
        f"`{r['command']}`, {r['date']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}. bf16 peak: {measured} TFLOP/s measured (8192^3 matmul), "
        f"{peak['datasheet'] or 'n/a'} datasheet.",
        "",
    ]
    for data in ("longtail", "dates"):
        t = r.get(f"throughput_{data}")
        if not t:
            continue
        lines += [
            f"### 1. Trainer throughput, QLoRA (NF4 + bf16), {data} "
            f"(median length {t['data']['length_median']}, p95 {t['data']['length_p95']}, "
            f"max {t['data']['length_max']})",
            "",
            *tp.table(t),
            "",
            "MFU (useful FLOPs / bf16 peak, measured | datasheet): "
            + "; ".join(
                f"{side} {pct(row['mfu_measured'])} | {pct(row['mfu_datasheet'])}"
                for side, row in t["sides"].items()
            ),
            "",
        ]
    prof = r.get("profile")
    if prof:
        lines += [
            "### Where a step's time goes (torch.profiler, longtail, QLoRA)",
            "",
            "| side | wall per step (s) | device busy per step (s) | device busy | kernel launches per step |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for side, x in prof.items():
            lines.append(
                f"| {side} | {x['wall_per_step_s']:.3f} | {x['device_busy_per_step_s']:.3f} "
                f"| {x['device_busy_fraction']:.0%} | {x['launches_per_step']:.0f} |"
            )
        lines.append("")
    m = r.get("qlora_memory")
    if m:
        lines += [
            "### 3. QLoRA memory",
            "",
            "| base | weights, linear layers (MB) | weights, whole model (MB) | training-step peak (MB) "
            "| tokens/s | MFU measured / datasheet |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ("bf16", "nf4"):
            x = m[name]
            lines.append(
                f"| {name} | {x['weight_bytes']['linear'] / 1e6:.1f} | {x['weight_bytes']['total'] / 1e6:.1f} "
                f"| {x['train_peak_bytes'] / 2**20:.0f} | {x['tokens_per_s']:.0f} "
                f"| {pct(x['mfu_measured'])} / {pct(x['mfu_datasheet'])} |"
            )
        lines += [
            "",
            f"NF4 / bf16: linear layers **{m['ratio_linear']:.3f}**, whole model **{m['ratio_total']:.3f}**, "
            f"training-step peak {m['ratio_train_peak']:.3f}",
            "",
        ]
    s = r.get("study_overhead")
    if s:
        lines += [
            "### 2. Study overhead",
            "",
            f"{s['trials']} trials (search + replicate seeds) in {s['wall_s']:.1f} s; the trials themselves "
            f"{s['trials_s']:.1f} s (median {s['trial_median_s']:.1f} s): **overhead {s['ratio']:.3f}** "
            f"(against N x the median trial: {s['ratio_vs_n_times_median']:.3f})",
            "",
        ]
    pk = r.get("packing")
    if pk:
        d = pk["decision"]
        lines += ["### 3. Packing trials (results/packing-*.md)", ""]
        lines += [f"- K={x['K']}: {x['gain']:.2f}x trials per hour against one at a time" for x in pk["rows"]]
        lines += ["", f"build into the study engine: {'yes' if d['build'] else 'no'} (best {d['best_gain']:.2f}x, threshold {d['threshold']}x)", ""]  # fmt: skip
    return lines


def pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x is not None else "n/a"
