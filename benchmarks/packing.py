"""Packing search trials: K LoRA trials of one arm trained at once over one shared, frozen base.

The K trials' micro-batches are concatenated along the batch dimension, so every frozen matmul
of the base runs once on K times the rows; each trial keeps its own LoRA factors, AdamW,
learning rate, weight decay, gradient clipping, schedule and data order, and trains exactly as
it would alone (checked per step against the same trial trained alone, which this benchmark
does anyway as its baseline). Whether that buys trials per hour on a CPU is what is measured:

- the baseline ("K=1") trains trials 0..K_max-1 one at a time; the packed side trains the first
  K of the same trials together (same seeds, same batches), so both sides do the same real work
  and the ratio "time of K trials one by one / time of K trials packed" is the gain;
- the sides alternate (all trials alone, K=2, K=4, K=8, then again, ...): median of the rounds;
- steady state: from the end of step 1 to the end of the last step of every run;
- what packing costs is counted: rows padded to the pack's longest batch, and the ``lm_head``
  run over the union of the trials' response positions.

    python -m benchmarks packing --smoke                      # the suite: seconds
    python -m benchmarks packing --model smollm2 --data longtail --steps 6 --batch-size 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.data.tokenize import IGNORE_INDEX, Encoded, make_batches
from ablate.device import autocast_for
from ablate.metrics import forward_logits, token_loss_sum
from ablate.models import load_base
from ablate.run import PeakMemory
from ablate.train import cosine_with_warmup
from benchmarks.throughput import (
    LORA_ALPHA,
    LORA_R,
    MAX_GRAD_NORM,
    MODELS,
    TARGETS,
    WARMUP_RATIO,
    StepClock,
    build_setup,
    environment,
    release_memory,
)

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = 1.5  # the issue's bar: build packing into the study engine only at this gain or more
LRS = (1e-3, 5e-4, 2e-3, 3e-4)  # trials of one search differ in their hyperparameters
DECAYS = (0.0, 0.01)

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- the packed layer


class PackedLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus K trials' LoRA factors, applied to K row-groups of one batch.

    Hand-written because peft cannot do this: its mixed-adapter batches (``adapter_names=``) are
    inference-only, and a peft model trains one active adapter per forward. Each trial's A and B
    are separate Parameters, so each trial gets its own optimizer exactly as if it were alone;
    they are stacked per forward (a copy of r x (in + out) numbers, small beside the matmuls).
    """

    def __init__(self, base: nn.Linear, seeds: Sequence[int], index: int, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / r
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        for seed in seeds:
            # Seeded per (trial, layer), never by position in the pack: alone and packed start equal.
            g = torch.Generator().manual_seed(seed * 100_003 + index)
            a = torch.empty(r, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)  # peft's default init of A
            self.A.append(nn.Parameter(a.to(base.weight.device)))
            self.B.append(nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        k = len(self.A)
        assert x.shape[0] % k == 0, f"{x.shape[0]} rows do not split into {k} trials"
        a = torch.stack(list(self.A)).to(x.dtype)  # (K, r, in)
        b = torch.stack(list(self.B)).to(x.dtype)  # (K, out, r)
        h = x.reshape(k, -1, x.shape[-1])  # trial k's rows are k*b .. (k+1)*b - 1
        lora = torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2))
        return y + lora.reshape(*y.shape) * self.scaling

    def trial_params(self, k: int) -> list[nn.Parameter]:
        return [self.A[k], self.B[k]]


def attach_packed(
    model: nn.Module,
    K: int,
    r: int = LORA_R,
    alpha: float = LORA_ALPHA,
    targets: Sequence[str] = TARGETS,
    seeds: Sequence[int] | None = None,
) -> list[PackedLoraLinear]:
    """Replace every target linear in place (trial k's factors seeded from ``seeds[k]``)."""
    seeds = list(range(K)) if seeds is None else list(seeds)
    assert len(seeds) == K
    layers = []
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    for index, name in enumerate(names):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        packed = PackedLoraLinear(getattr(owner, child), seeds, index, r, alpha)
        setattr(owner, child, packed)
        layers.append(packed)
    return layers


def detach_packed(model: nn.Module) -> None:
    """Put every wrapped base linear back (the base's own weights were never touched)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, PackedLoraLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.base)


# --------------------------------------------------------------------------- data and the step


@dataclass(frozen=True)
class Trial:
    seed: int  # its LoRA init and its data order
    lr: float = 1e-3
    weight_decay: float = 0.0


def trials_for(n: int) -> list[Trial]:
    return [Trial(i, LRS[i % len(LRS)], DECAYS[i % len(DECAYS)]) for i in range(n)]


def batch_stream(examples: Sequence[Encoded], batch_size: int, seed: int, pad_id: int) -> Iterator[Batch]:
    """A trial's micro-batches, epoch after epoch, as ``ablate.run`` orders them (seed*1000+epoch).

    The one short batch of an epoch is dropped (``drop_last``): every trial must bring exactly
    ``batch_size`` rows so the layer can view the pack as (K, rows, features). The study engine
    would pad it with masked rows instead.
    """
    if len(examples) < batch_size:
        raise ValueError(f"{len(examples)} examples, fewer than one batch of {batch_size}")
    epoch = 0
    while True:
        # Read one by one: make_batches may collate lazily, and a trial reads a few of its batches.
        for b in make_batches(examples, batch_size, shuffle=True, seed=seed * 1000 + epoch, pad_id=pad_id):
            if b["input_ids"].shape[0] == batch_size:
                yield b
        epoch += 1


def pack(batches: Sequence[Batch], pad_id: int) -> Batch:
    """Concatenate the trials' micro-batches, right-padding each to the longest one."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {
        key: torch.cat([F.pad(b[key], (0, width - b[key].shape[1]), value=v) for b in batches])
        for key, v in fill.items()
    }


@dataclass
class Result:
    losses: list[list[float]]  # [trial][step]: each trial's own token-mean loss
    params: list[list[torch.Tensor]]  # [trial]: its final LoRA factors (copies)
    tokens: list[int] = field(default_factory=list)  # real tokens per step (all trials)
    positions: list[int] = field(default_factory=list)  # padded positions per step


def packed_loss(model: nn.Module, batches: Sequence[Batch], pad_id: int, autocast: Any) -> list[torch.Tensor]:
    """One forward over the pack; each trial's own token-mean loss on its own rows."""
    with autocast():
        logits, targets = forward_logits(model, pack(batches, pad_id))
    losses, row = [], 0
    for mine in batches:
        rows = slice(row, row + mine["input_ids"].shape[0])
        row = rows.stop
        n_k = int((mine["labels"][:, 1:] != IGNORE_INDEX).sum())  # as ablate.train counts targets
        losses.append(token_loss_sum(logits[rows], targets[rows]) / max(n_k, 1))
    return losses


def train_packed(
    model: nn.Module,
    trials: Sequence[Trial],
    examples: Sequence[Encoded],
    *,
    steps: int,
    batch_size: int,
    pad_id: int,
    precision: str = "fp32",
    on_step: Callable[[], None] | None = None,
) -> Result:
    """Train the trials together for ``steps`` optimizer steps (K=1: one trial alone)."""
    layers = attach_packed(model, len(trials), seeds=[t.seed for t in trials])
    try:
        params = [[p for layer in layers for p in layer.trial_params(k)] for k in range(len(trials))]
        opts = [
            torch.optim.AdamW(p, lr=t.lr, weight_decay=t.weight_decay)
            for p, t in zip(params, trials, strict=True)
        ]
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, cosine_with_warmup(steps, WARMUP_RATIO)) for o in opts]
        streams = [batch_stream(examples, batch_size, t.seed, pad_id) for t in trials]
        autocast = autocast_for(next(model.parameters()).device, precision)
        result = Result(losses=[[] for _ in trials], params=[])
        model.train()
        for _ in range(steps):
            batches = [next(s) for s in streams]
            losses = packed_loss(model, batches, pad_id, autocast)
            # The sum: trial k's parameters see only loss k, so each gets its gradient alone.
            torch.stack(losses).sum().backward()
            for p, opt, sched in zip(params, opts, scheds, strict=True):
                torch.nn.utils.clip_grad_norm_(p, MAX_GRAD_NORM)  # over this trial's params only
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            for k, loss in enumerate(losses):
                result.losses[k].append(float(loss.detach()))
            result.tokens.append(sum(int(b["attention_mask"].sum()) for b in batches))
            result.positions.append(len(batches) * batch_size * max(b["input_ids"].shape[1] for b in batches))
            if on_step:
                on_step()
        result.params = [[t.detach().clone() for t in p] for p in params]
        return result
    finally:
        model.eval()
        detach_packed(model)


def compare(alone: Sequence[Result], packed: Result) -> dict[str, Any]:
    """Max |loss difference| per step and max |param difference| at the end, trial k alone vs packed."""
    by_step = [
        max(abs(a.losses[0][s] - p) for a, p in zip(alone, step, strict=True))
        for s, step in enumerate(zip(*packed.losses, strict=True))
    ]
    params = max(
        float((a - p).abs().max())
        for one, mine in zip(alone, packed.params, strict=True)
        for a, p in zip(one.params[0], mine, strict=True)
    )
    return {"max_loss_diff": max(by_step), "loss_diff_by_step": by_step, "max_param_diff": params}


def equivalence(model: nn.Module, trials: Sequence[Trial], examples: Sequence[Encoded], **kw: Any) -> dict:
    """Train each trial alone, then all of them packed, over the same batches and inits."""
    alone = [train_packed(model, [t], examples, **kw) for t in trials]
    return compare(alone, train_packed(model, trials, examples, **kw))


# --------------------------------------------------------------------------- measurement


def timed(
    model: nn.Module, trials: Sequence[Trial], examples: Sequence[Encoded], **kw: Any
) -> dict[str, Any]:
    """One run: steady-state seconds and real tokens (steps 2..N), padding, peak memory."""
    clock = StepClock()
    release_memory()
    with PeakMemory(next(model.parameters()).device) as mem:
        clock.start()
        result = train_packed(model, trials, examples, on_step=clock.mark, **kw)
    return {
        "K": len(trials),
        "steady_s": clock.ends[-1] - clock.ends[0],
        "tokens": sum(result.tokens[1:]),
        "positions": sum(result.positions[1:]),
        "peak_mb": mem.peak_bytes / 2**20,
        "result": result,
    }


def measure_round(model: nn.Module, ks: Sequence[int], examples: Sequence[Encoded], **kw: Any) -> list[dict]:
    """The baseline (trials 0..K_max-1, one at a time), then each K > 1 packed: one row per K."""
    trials = trials_for(max(ks))
    alone = [timed(model, [t], examples, **kw) for t in trials]
    rows = []
    for K in ks:
        seq_s = sum(a["steady_s"] for a in alone[:K])
        if K == 1:  # the K=1 row: every baseline trial, one at a time, summed
            run = {key: sum(a[key] for a in alone) for key in ("steady_s", "tokens", "positions")}
            run |= {"K": 1, "trials": len(alone), "peak_mb": max(a["peak_mb"] for a in alone), "gain": 1.0}
        else:
            run = timed(model, trials[:K], examples, **kw)
            run |= {"trials": K, "gain": seq_s / run["steady_s"]}  # the same K trials: one by one / packed
            run["eq"] = compare([a["result"] for a in alone[:K]], run.pop("result"))
            assert run["tokens"] == sum(a["tokens"] for a in alone[:K]), "packed trials saw other batches"
        rows.append(run)
    return rows


def frozen_share(model: nn.Module, K: int, examples: Sequence[Encoded], **kw: Any) -> dict[str, float]:
    """Share of operator time (torch.profiler, CPU self time of steps 2-3 at K) in the frozen
    matmuls (``aten::mm``/``addmm``: the base's linears and lm_head, forward and input gradient),
    the trials' LoRA ``bmm``s and attention."""
    from torch.profiler import ProfilerActivity, profile, schedule

    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=2, repeat=1))
    with prof:
        train_packed(model, trials_for(K), examples, on_step=prof.step, **{**kw, "steps": 3})
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0

    def share(match: Callable[[str], bool]) -> float:
        return sum(e.self_cpu_time_total for e in events if match(e.key)) / total

    return {
        "K": K,
        "frozen_mm": share(lambda k: k in ("aten::mm", "aten::addmm")),
        "lora_bmm": share(lambda k: k == "aten::bmm"),
        "attention": share(lambda k: "scaled_dot_product" in k),
    }


def summarise(rounds: list[list[dict]], steps: int) -> list[dict[str, Any]]:
    """Per K: medians over rounds; trials/hour of ``steps``-step trials at the steady step time."""
    out = []
    for i, K in enumerate(r["K"] for r in rounds[0]):
        mine = [r[i] for r in rounds]
        # Seconds per step of one pack (K=1: of one trial, the mean over the baseline's trials).
        s_per_step = statistics.median(
            r["steady_s"] / (r["trials"] if K == 1 else 1) / (steps - 1) for r in mine
        )
        eqs = [r["eq"] for r in mine if "eq" in r]
        out.append({
            "K": K,
            "s_per_step": s_per_step,
            "tokens_per_s": statistics.median(r["tokens"] / r["steady_s"] for r in mine),
            "trials_per_hour": 3600 * K / (s_per_step * steps),
            "gain": statistics.median(r["gain"] for r in mine),
            "gain_per_round": [r["gain"] for r in mine],
            "padding_fraction": statistics.median(1 - r["tokens"] / r["positions"] for r in mine),
            "peak_mb": statistics.median(r["peak_mb"] for r in mine),
            "max_loss_diff": max((e["max_loss_diff"] for e in eqs), default=0.0),
            "max_param_diff": max((e["max_param_diff"] for e in eqs), default=0.0),
        })  # fmt: skip
    return out


def render(res: dict[str, Any]) -> str:
    rows = res["rows"]
    lines = [
        f"## Packing search trials ({res['model']}, {res['data']}, {res['precision']}, batch "
        f"{res['batch_size']} per trial, {res['steps']} steps, {res['rounds']} rounds)",
        "",
        "| K | s/step | real tokens/s | trials/hour (vs K=1; per round) | padding | peak MB "
        "| max loss diff vs alone |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        per_round = ", ".join(f"{g:.2f}" for g in r["gain_per_round"])
        diff = "-" if r["K"] == 1 else f"{r['max_loss_diff']:.1e} (params {r['max_param_diff']:.1e})"
        lines.append(
            f"| {r['K']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} "
            f"| {r['trials_per_hour']:.0f} (**{r['gain']:.2f}x**; {per_round}) "
            f"| {r['padding_fraction']:.1%} | {r['peak_mb']:.0f} | {diff} |"
        )
    lines += [
        "",
        f"K=1 is trials 0..{rows[-1]['K'] - 1} trained one at a time; K>1 the first K of them packed; "
        f"trials/hour of {res['steps']}-step trials at the steady step time; the gain is the same K "
        "trials' seconds one by one / packed.",
    ]
    if res.get("profile"):
        p = res["profile"]
        lines.append(
            f"Operator time at K={p['K']}: frozen matmuls {p['frozen_mm']:.0%}, LoRA bmm "
            f"{p['lora_bmm']:.0%}, attention {p['attention']:.0%}."
        )
    d = res["decision"]
    yes = "yes" if d["build"] else "no"
    lines.append(
        f"\nbuild into the study engine: {yes} (best gain {d['best_gain']:.2f}x, threshold {THRESHOLD}x)"
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda on a GPU machine (benchmarks gpu runs it)"
    )
    parser.add_argument("--quant", choices=("none", "nf4"), default="none", help="nf4: QLoRA's 4-bit base")
    parser.add_argument("--data", choices=("longtail", "dates"), default="longtail")
    parser.add_argument("--k", default="1,2,4,8", help="trials per pack, comma-separated")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trial (>= 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch rows per trial")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=None, help="train examples (default: the data's)")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator-time profile")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="tiny, K=1,2, 3 steps, 1 round: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.k, args.steps, args.rounds, args.n_train = "tiny", "1,2", 3, 1, args.n_train or 64
    args.ks = sorted({1, *(int(k) for k in args.k.split(","))})
    if args.steps < 2:
        parser.error("--steps must be >= 2 (steady state starts after step 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    setup, data_info = build_setup(
        model=args.model, data=args.data, device=device, steps=args.steps,
        batch_size=args.batch_size, n_train=args.n_train, quant=args.quant,
    )  # fmt: skip
    base = load_base(setup.model_cfg, setup.quant, device)
    kw = dict(steps=args.steps, batch_size=args.batch_size, pad_id=base.tokenizer.pad_token_id)
    kw["precision"] = setup.precision
    started = time.perf_counter()
    # Untimed first: one-off costs (allocator growth, lazy init) belong to no side.
    for K in (1, max(args.ks)):
        train_packed(base.model, trials_for(K), setup.examples, **{**kw, "steps": 2})
    rounds = []
    for r in range(args.rounds):
        rounds.append(measure_round(base.model, args.ks, setup.examples, **kw))
        print(
            f"  round {r + 1}: gains " + ", ".join(f"K={x['K']} {x['gain']:.2f}x" for x in rounds[-1]),
            file=sys.stderr,
        )
    profile = None if args.no_profile else frozen_share(base.model, max(args.ks), setup.examples, **kw)
    res = {
        "benchmark": "packing",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks packing " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "data": args.data, "precision": setup.precision, "steps": args.steps,
        "device": args.device, "quant": args.quant,
        "batch_size": args.batch_size, "rounds": args.rounds, "lora": {"r": LORA_R, "alpha": LORA_ALPHA},
        "rows": summarise(rounds, args.steps),
        "equivalence": [{"K": x["K"], "round": i + 1, **x["eq"]} for i, rr in enumerate(rounds) for x in rr if "eq" in x],
        "profile": profile,
        "runs": rounds,
        "data_info": data_info,
        "environment": environment(device),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    best = max((r["gain"] for r in res["rows"] if r["K"] > 1), default=1.0)
    res["decision"] = {"build": best >= THRESHOLD, "best_gain": best, "threshold": THRESHOLD}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("packing-smoke" if args.smoke else f"packing-{args.model}-{args.data}")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
