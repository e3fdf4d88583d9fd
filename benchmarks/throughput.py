"""Training throughput: ablate's one training loop vs the plain peft + transformers ``Trainer`` recipe.

The project claims its loop wastes no compute on padding (length-grouped batches) or on the
vocabulary projection of prompt positions (``logits_to_keep``), so it should be at least as
fast as the recipe most people would write instead. A claim like that is only worth something
measured side by side, on the same machine, in the same process, under the same noise:

- the same base model (loaded fresh for every run, fp32, CPU, fixed torch threads),
- the same LoRA (r=8, alpha=16, q/k/v/o, dropout 0; the trainable counts are asserted equal),
- the same examples (the built-in ``dates`` task, tokenized once with ``ablate.data.encode``,
  so both sides see identical ``input_ids``/``labels``),
- the same batch size, optimizer steps, learning rate and schedule shape, and seed.

Side A ("ablate") attaches LoRA with ``ablate.components.attach`` and trains with
``ablate.train.train`` on ``make_batches`` (length-grouped). Side B ("peft+Trainer") wraps the
base with ``peft.get_peft_model`` and trains with ``transformers.Trainer`` on randomly sampled,
right-padded batches (``train_sampling_strategy="random"``, i.e. ``group_by_length=False``).

The runs alternate A B A B ... so slow drift of a shared machine hits both sides alike. The
headline number is the ratio of median real-token throughputs (A/B): real tokens are the
non-pad tokens each side actually trained on, so padding counts as the cost it is. Throughput
is steady-state, from the end of step 1 to the end of the last step, measured by the same kind
of probe on both sides (a callback after each optimizer step); the whole training call,
including step 1 and each side's setup, is reported too. This is a measurement, never a test
assertion: timings on a shared machine are too noisy to gate anything on.

    python benchmarks/throughput.py --model tiny --steps 20 --rounds 1     # quick check, seconds
    python benchmarks/throughput.py --model smollm2 --steps 20 --batch-size 8 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import yaml
from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from ablate.components import Stack, attach
from ablate.components.lora import LoraConfig as AblateLoraConfig
from ablate.components.quant import QuantConfig
from ablate.data import DataConfig, Encoded, encode, load_splits, make_batches
from ablate.data.tokenize import collate
from ablate.models import Base, ModelConfig, load_base, resolve
from ablate.run import PeakMemory, seed_everything
from ablate.train import TrainConfig, cosine_with_warmup, train

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = {"tiny": "tiny.yaml", "smollm2": "smollm2_135m.yaml"}
SIDES = ("ablate", "peft+Trainer")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_R, LORA_ALPHA = 8, 16.0
WARMUP_RATIO = 0.1  # ablate's TrainConfig default; B gets the same number of warmup steps
MAX_GRAD_NORM = 1.0
CPU = torch.device("cpu")

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- measurement


@dataclass
class StepClock:
    """Wall-clock time at the end of every optimizer step.

    Both sides are timed by this same probe (ablate's ``on_log`` hook, a ``TrainerCallback``'s
    ``on_step_end``), so "end of step 1 to end of step N" means the same thing on each side and
    includes everything between steps: batch fetching and collation, forward, backward,
    clipping, the optimizer and the scheduler.
    """

    started: float = 0.0
    stopped: float = 0.0
    ends: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.perf_counter()

    def mark(self) -> None:
        self.ends.append(time.perf_counter())

    def stop(self) -> None:
        self.stopped = time.perf_counter()


@dataclass
class Run:
    """One side's measured run; per-step lists are indexed by optimizer step - 1."""

    side: str
    round: int
    clock: StepClock
    tokens: list[int]  # real (non-pad) tokens per step
    positions: list[int]  # padded positions per step (batch x width)
    losses: list[float]  # train loss per step (token mean over response targets)
    trainable_params: int
    init_checksum: float  # sum of |LoRA weights| before training: equal seeds give equal inits
    peak_rss_bytes: int
    start_rss_bytes: int
    load_s: float  # base load time, excluded from every timing
    threads: int  # torch threads after the run (checks nothing changed them)
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Steady-state (steps 2..N) and whole-call numbers of this run."""
        steps = len(self.clock.ends)
        steady_s = self.clock.ends[-1] - self.clock.ends[0]
        steady_tokens = sum(self.tokens[1:])
        call_s = self.clock.stopped - self.clock.started
        return {
            "side": self.side,
            "round": self.round,
            "steps": steps,
            "tokens_per_s": steady_tokens / steady_s,
            "s_per_step": steady_s / (steps - 1),
            "tokens_per_step": steady_tokens / (steps - 1),
            "call_s": call_s,
            "call_tokens_per_s": sum(self.tokens) / call_s,
            "first_step_s": self.clock.ends[0] - self.clock.started,
            "tokens": sum(self.tokens),
            "positions": sum(self.positions),
            "padding_fraction": 1.0 - sum(self.tokens) / sum(self.positions),
            "loss_first": self.losses[0],
            "loss_last": self.losses[-1],
            "loss_decreased": self.losses[-1] < self.losses[0],
            "trainable_params": self.trainable_params,
            "init_checksum": self.init_checksum,
            "peak_rss_mb": self.peak_rss_bytes / 2**20,
            "rss_growth_mb": (self.peak_rss_bytes - self.start_rss_bytes) / 2**20,
            "load_s": self.load_s,
            "threads": self.threads,
            **self.extra,
        }


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so each run's RSS starts clean.

    Without ``malloc_trim`` glibc keeps the previous run's freed arenas resident, and the next
    run's RSS growth would be understated by however much it could reuse.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS numbers are just less clean
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _checksum(params: Sequence[torch.nn.Parameter]) -> float:
    with torch.no_grad():
        return float(sum(p.detach().abs().sum() for p in params))


# --------------------------------------------------------------------------- the two sides


@dataclass(frozen=True)
class Setup:
    """Everything both sides share: the model config, the encoded examples and the knobs."""

    model_cfg: ModelConfig
    examples: list[Encoded]
    steps: int
    batch_size: int
    lr: float
    seed: int

    @property
    def warmup_steps(self) -> int:
        """ablate's warmup length (``cosine_with_warmup``), given to the Trainer as a step count."""
        return int(round(self.steps * WARMUP_RATIO))


def _load(setup: Setup) -> tuple[Base, float]:
    started = time.perf_counter()
    base = load_base(setup.model_cfg, QuantConfig(), CPU)
    return base, time.perf_counter() - started


def run_ablate(setup: Setup, round_: int) -> Run:
    """Side A: ablate's LoRA component and its one training loop on length-grouped batches."""
    base, load_s = _load(setup)
    seed_everything(setup.seed)
    lora = AblateLoraConfig.from_dict(
        {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": list(TARGETS), "lr": setup.lr}
    )
    stack: Stack = attach(base.model, {"lora": lora})
    params = [p for g in stack.param_groups() for p in g["params"]]
    pad_id = base.tokenizer.pad_token_id

    def epoch_batches(epoch: int) -> list[Batch]:
        # Exactly what ablate.run.run_trial passes to train().
        return make_batches(
            setup.examples, setup.batch_size, shuffle=True, seed=setup.seed * 1000 + epoch, pad_id=pad_id
        )

    cfg = TrainConfig(
        steps=setup.steps,
        batch_size=setup.batch_size,
        grad_accum=1,
        warmup_ratio=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM,
        eval_every=setup.steps,
        precision="fp32",
        seed=setup.seed,
        progress=False,
    )
    init = _checksum(params)
    clock = StepClock()
    _release_memory()
    start_rss = _rss()
    with PeakMemory(CPU) as mem:
        clock.start()
        result = train(base.model, stack, epoch_batches, cfg, CPU, on_log=lambda step, row: clock.mark())
        clock.stop()
    # The batches train() consumed, rebuilt after the clock stopped (make_batches is deterministic).
    consumed = _first_batches(epoch_batches, setup.steps)
    tokens = [int(b["attention_mask"].sum()) for b in consumed]
    assert sum(tokens) == result.tokens, "rebuilt batches differ from the ones train() consumed"
    run = Run(
        side="ablate",
        round=round_,
        clock=clock,
        tokens=tokens,
        positions=[b["attention_mask"].numel() for b in consumed],
        losses=[row["train_loss"] for row in result.history],
        trainable_params=sum(stack.num_parameters().values()),
        init_checksum=init,
        peak_rss_bytes=mem.peak_bytes,
        start_rss_bytes=start_rss,
        load_s=load_s,
        threads=torch.get_num_threads(),
        # ablate's own timer (sum of per-step times), as a cross-check of the probe.
        extra={"ablate_reported_tokens_per_s": result.tokens_per_s},
    )
    stack.detach()
    return run


def _first_batches(epoch_batches: Callable[[int], list[Batch]], n: int) -> list[Batch]:
    out: list[Batch] = []
    epoch = 0
    while len(out) < n:
        out.extend(epoch_batches(epoch))
        epoch += 1
    return out[:n]


class _ProbedTrainer(Trainer):
    """The stock Trainer, plus a record of each step's real tokens, padded positions and loss.

    Counted in ``training_step`` (one call per optimizer step at ``gradient_accumulation_steps=1``)
    rather than in the collator, because accelerate's dataloader fetches one batch ahead.
    """

    def __init__(self, *args: Any, record: dict[str, list[float]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        mask = inputs["attention_mask"]
        self.record["tokens"].append(int(mask.sum()))
        self.record["positions"].append(mask.numel())
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.record["losses"].append(float(loss))  # ablate's loop also syncs the loss every step
        return loss


class _ClockCallback(TrainerCallback):
    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.mark()


def run_trainer(setup: Setup, round_: int) -> Run:
    """Side B: ``peft.get_peft_model`` + ``transformers.Trainer``, the common recipe.

    Random sampling and right padding (``group_by_length=False``, now spelled
    ``train_sampling_strategy="random"``), the model's own loss over full-length logits, no
    evaluation, logging, saving or reporting, and no dataloader workers.
    """
    base, load_s = _load(setup)
    transformers.set_seed(setup.seed)
    lora = peft.LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(base.model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    pad_id = base.tokenizer.pad_token_id
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in setup.examples]

    def collator(features: list[dict[str, list[int]]]) -> Batch:
        # Right padding, labels -100 at pads: what DataCollatorForSeq2Seq(padding=True) yields
        # with a right-padding tokenizer; ablate's collate keeps the tensors byte-identical.
        return collate([Encoded(f["input_ids"], f["labels"]) for f in features], pad_id)

    record: dict[str, list[float]] = {"tokens": [], "positions": [], "losses": []}
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=setup.batch_size,
            gradient_accumulation_steps=1,
            max_steps=setup.steps,
            learning_rate=setup.lr,
            weight_decay=0.0,
            optim="adamw_torch",  # torch.optim.AdamW, the optimizer ablate's loop uses
            lr_scheduler_type="cosine",
            warmup_steps=setup.warmup_steps,
            max_grad_norm=MAX_GRAD_NORM,
            train_sampling_strategy="random",  # group_by_length=False
            eval_strategy="no",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            label_names=["labels"],
            use_cpu=True,
            seed=setup.seed,
            data_seed=setup.seed,
        )
        trainer = _ProbedTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[_ClockCallback(clock)],
            record=record,
        )
        init = _checksum(params)
        _release_memory()
        start_rss = _rss()
        with PeakMemory(CPU) as mem:
            clock.start()
            trainer.train()
            clock.stop()
    return Run(
        side="peft+Trainer",
        round=round_,
        clock=clock,
        tokens=[int(x) for x in record["tokens"]],
        positions=[int(x) for x in record["positions"]],
        losses=record["losses"],
        trainable_params=sum(p.numel() for p in params),
        init_checksum=init,
        peak_rss_bytes=mem.peak_bytes,
        start_rss_bytes=start_rss,
        load_s=load_s,
        threads=torch.get_num_threads(),
    )


RUNNERS: dict[str, Callable[[Setup, int], Run]] = {"ablate": run_ablate, "peft+Trainer": run_trainer}


# --------------------------------------------------------------------------- orchestration


def build_setup(args: argparse.Namespace) -> tuple[Setup, dict[str, Any]]:
    """The shared model config and the examples both sides train on, tokenized once."""
    raw = yaml.safe_load((ROOT / "conf" / "model" / MODEL_CONFIGS[args.model]).read_text())
    model_cfg = ModelConfig.from_dict({**raw, "dtype": "float32"})  # fp32 on CPU, whatever "auto" says
    data_raw = yaml.safe_load((ROOT / "conf" / "data" / "dates.yaml").read_text())
    if args.n_train is not None:
        data_raw["n_train"] = args.n_train
    data_cfg = DataConfig.from_dict(data_raw)
    # Only the tokenizer is needed here; each run loads its own fresh base.
    tokenizer = AutoTokenizer.from_pretrained(resolve(model_cfg))
    encoded = encode(load_splits(data_cfg)["train"], tokenizer, data_cfg.max_length)
    lengths = [len(e.input_ids) for e in encoded]
    setup = Setup(
        model_cfg=model_cfg,
        examples=list(encoded),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    data_info = {
        "task": data_cfg.name,
        "n_train": len(encoded),
        "dropped": encoded.dropped,
        "max_length": data_cfg.max_length,
        "length_min": min(lengths),
        "length_mean": statistics.fmean(lengths),
        "length_max": max(lengths),
    }
    return setup, data_info


def measure(setup: Setup, rounds: int) -> list[Run]:
    """Alternate the sides (A B A B ...) and sanity-check every pair of runs."""
    runs: list[Run] = []
    for r in range(1, rounds + 1):
        for side in SIDES:
            _release_memory()
            run = RUNNERS[side](setup, r)
            counts = {len(run.clock.ends), len(run.tokens), len(run.positions), len(run.losses)}
            assert counts == {setup.steps}, f"{side}: expected {setup.steps} steps, recorded {counts}"
            s = run.summary()
            print(
                f"[round {r}/{rounds}] {side:>13}: {s['tokens_per_s']:8.1f} tok/s  "
                f"{s['s_per_step']:.3f} s/step  padding {s['padding_fraction']:.1%}  "
                f"loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}"
                + ("" if s["loss_decreased"] else "  WARNING: loss did not decrease"),
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
            del run
        a, b = runs[-2], runs[-1]
        assert a.trainable_params == b.trainable_params, (
            f"trainable parameters differ: ablate {a.trainable_params} vs peft+Trainer {b.trainable_params}"
        )
    return runs


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Medians per side, the headline ratio, and the per-round ratios that show its spread."""
    rows = [r.summary() for r in runs]
    keys = (
        "tokens_per_s",
        "s_per_step",
        "tokens_per_step",
        "call_tokens_per_s",
        "call_s",
        "first_step_s",
        "padding_fraction",
        "peak_rss_mb",
        "rss_growth_mb",
    )
    sides: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        mine = [row for row in rows if row["side"] == side]
        sides[side] = {k: statistics.median(row[k] for row in mine) for k in keys}
        sides[side].update(
            trainable_params=mine[0]["trainable_params"],
            loss_first=[row["loss_first"] for row in mine],
            loss_last=[row["loss_last"] for row in mine],
            all_losses_decreased=all(row["loss_decreased"] for row in mine),
        )
    a, b = sides["ablate"], sides["peft+Trainer"]
    per_round = [
        ra["tokens_per_s"] / rb["tokens_per_s"]
        for ra, rb in zip(rows[0::2], rows[1::2], strict=True)
        if ra["side"] == "ablate" and rb["side"] == "peft+Trainer"
    ]
    return {
        "sides": sides,
        "ratio_tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
        "ratio_tokens_per_s_per_round": per_round,
        "ratio_call_tokens_per_s": a["call_tokens_per_s"] / b["call_tokens_per_s"],
        "ratio_s_per_step": a["s_per_step"] / b["s_per_step"],
        "same_lora_init": math.isclose(runs[0].init_checksum, runs[1].init_checksum, rel_tol=1e-6),
        "runs": rows,
    }


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """A small table a reader can paste into the README or a PR."""
    s = summary["sides"]
    lines = [
        f"## Training throughput: ablate vs peft+Trainer ({meta['model']})",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['environment']['threads']} torch threads, "
        f"{meta['environment']['cpu_count']} CPUs, torch {meta['environment']['torch']}, "
        f"transformers {meta['environment']['transformers']}, peft {meta['environment']['peft']}; "
        f"load average (1 min) {meta['environment']['loadavg_1_5_15_before'][0]:.1f} before, "
        f"{meta['environment']['loadavg_1_5_15_after'][0]:.1f} after",
        "",
        f"{meta['config']['steps']} steps x batch {meta['config']['batch_size']}, "
        f"{meta['config']['rounds']} round(s) (A B interleaved), medians; tokens/s = real (non-pad) "
        "tokens per second, steady state (end of step 1 to end of the last step).",
        "",
        "| side | tokens/s | s/step | real tokens/step | padding | tokens/s (whole call) "
        "| peak RSS (MB) | RSS growth (MB) | loss first → last | trainable params |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for side in SIDES:
        x = s[side]
        losses = ", ".join(
            f"{f:.2f} → {la:.2f}" for f, la in zip(x["loss_first"], x["loss_last"], strict=True)
        )
        lines.append(
            f"| {side} | {x['tokens_per_s']:.0f} | {x['s_per_step']:.3f} | {x['tokens_per_step']:.0f} "
            f"| {x['padding_fraction']:.1%} | {x['call_tokens_per_s']:.0f} | {x['peak_rss_mb']:.0f} "
            f"| {x['rss_growth_mb']:.0f} | {losses} | {x['trainable_params']:,} |"
        )
    per_round = ", ".join(f"{r:.2f}" for r in summary["ratio_tokens_per_s_per_round"])
    lines += [
        "",
        f"**ratio ablate / peft+Trainer, tokens/s: {summary['ratio_tokens_per_s']:.2f}** "
        f"(per round: {per_round}; whole call: {summary['ratio_call_tokens_per_s']:.2f}; "
        f"s/step ratio: {summary['ratio_s_per_step']:.2f})",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training throughput of ablate's loop vs peft + transformers.Trainer (a ratio).",
    )
    parser.add_argument("--model", choices=sorted(MODEL_CONFIGS), default="smollm2")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (>= 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="A B pairs, interleaved")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (conf/peft/lora.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, fixed for all runs")
    parser.add_argument("--n-train", type=int, default=None, help="train examples (default: dates.yaml)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (steady-state throughput needs steps after the first)")
    for name in ("batch_size", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # other work on the machine: the numbers' noise floor
    setup, data_info = build_setup(args)
    runs = measure(setup, args.rounds)
    load_after = os.getloadavg()
    summary = summarise(runs)
    meta = {
        "benchmark": "throughput",
        "model": args.model,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "lr": args.lr,
            "seed": args.seed,
            "warmup_steps": setup.warmup_steps,
            "warmup_shape": {
                "ablate": [round(cosine_with_warmup(args.steps, WARMUP_RATIO)(i), 4) for i in range(3)],
                "note": "ablate warms up (i+1)/w, transformers i/w: B's first step has lr 0",
            },
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": list(TARGETS)},
            "model": dataclasses.asdict(setup.model_cfg),
        },
        "data": data_info,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "platform": platform.platform(),
            "cpu_count": _cpu_count(),
            "threads": args.threads,
            "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
        },
    }
    table = markdown(meta, summary)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"throughput-{args.model}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, **summary}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(table)
    if not summary["same_lora_init"]:
        print("note: the two sides' LoRA initialisations differ (checksums)", file=sys.stderr)
    for side in SIDES:
        if not summary["sides"][side]["all_losses_decreased"]:
            print(f"WARNING: {side}: the loss did not decrease in every run", file=sys.stderr)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
