"""Training throughput: ablate's one training loop vs the plain peft + transformers ``Trainer`` recipe.

The project claims its loop wastes no compute on padding (length-grouped batches) or on the
vocabulary projection of prompt positions (``logits_to_keep``), so it should be faster than the
recipe most people would write instead. A claim like that is only worth something measured side
by side, on the same machine, in the same process, under the same noise:

- the same base model (loaded fresh for every run, on the same device, in the same dtype, with
  the same quantisation: ``load_base`` for both sides),
- the same LoRA (r=8, alpha=16, every linear layer of the blocks, dropout 0; the trainable counts
  are asserted equal),
- the same examples (tokenized once with ``ablate.data.tokenize.encode``, so both sides see identical
  ``input_ids``/``labels``): the built-in ``dates`` task, or ``longtail``, generated here with
  long-tailed (log-normal) lengths like real instruction data,
- the same batch size, optimizer steps, learning rate and schedule shape, seed and precision:
  what a user would pick on this hardware (bf16 where the device does bf16 natively).

Side A ("ablate") attaches LoRA with ``ablate.components.stack.attach`` and trains with
``ablate.train.train`` on ``make_batches`` (length-grouped). Side B ("peft+Trainer") wraps the
base with ``peft.get_peft_model`` and trains with ``transformers.Trainer`` on randomly sampled,
right-padded batches. Side C ("peft+Trainer+gbl") is side B with the one flag that makes the
peer faster on variable lengths, ``group_by_length`` (now ``train_sampling_strategy=
"group_by_length"``), so the headline ratio is never against a straw man.

The runs alternate A B C A B C ... so slow drift of a shared machine hits every side alike. The
headline number is the ratio of median real-token throughputs: real tokens are the non-pad
tokens each side actually trained on, so padding counts as the cost it is. Throughput is
steady-state, from the end of step 1 to the end of the last step, measured by the same kind of
probe on every side (a callback after each optimizer step; on CUDA both sides synchronise every
step because both read the loss). This is a measurement, never a test assertion.

    python -m benchmarks throughput --model tiny --steps 20 --rounds 1     # quick check, seconds
    python -m benchmarks throughput --model smollm2 --data longtail --steps 30 --rounds 3
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
import random
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

from ablate.components.lora import LoraConfig as AblateLoraConfig
from ablate.components.stack import Stack, attach
from ablate.data import DataConfig, Example, load_splits
from ablate.data.tokenize import Encoded, EncodedList, collate, encode, make_batches
from ablate.device import autocast_for
from ablate.metrics import evaluate
from ablate.models import Base, load_base, resolve
from ablate.run import PeakMemory, seed_everything
from ablate.schema import ModelConfig, QuantConfig, TrainConfig
from ablate.train import train

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ablate", "peft+Trainer", "peft+Trainer+gbl")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_R, LORA_ALPHA = 8, 16.0
WARMUP_RATIO = 0.1  # ablate's TrainConfig default; the Trainer gets the same number of warmup steps
MAX_GRAD_NORM = 1.0

#: Random-init Llama shapes (no download) beside the two configs in conf/model/. ``mid`` sits
#: between tiny and SmolLM2 for the scaling table; ``llama1b`` is TinyLlama-1.1B's shape for GPUs.
SHAPES: dict[str, dict[str, int]] = {
    "mid": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=1024),
    "llama1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                    num_key_value_heads=4, max_position_embeddings=2048),
}  # fmt: skip
MODEL_FILES = {"tiny": "tiny.yaml", "smollm2": "smollm2_135m.yaml"}
MODELS = (*MODEL_FILES, *SHAPES)

Batch = dict[str, torch.Tensor]

#: Called at the end of every optimizer step of every side (a profiler's ``step``, say).
STEP_HOOKS: list[Callable[[], None]] = []


def model_config(name: str, dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a benchmark model: a conf/model/ file, or a random Llama of ``SHAPES``."""
    if name in MODEL_FILES:
        raw = yaml.safe_load((ROOT / "conf" / "model" / MODEL_FILES[name]).read_text())
        return ModelConfig.from_dict({**raw, "dtype": dtype})
    return ModelConfig.from_dict(
        {"source": "tiny", "name_or_path": name, "dtype": dtype, "tiny": SHAPES[name]}
    )


# --------------------------------------------------------------------------- data


def longtail_examples(n: int, tokenizer: Any, seed: int, median_tokens: int = 64) -> list[Example]:
    """Generated prompt/response pairs whose lengths follow a log-normal (long-tailed) law.

    Real instruction data is like this: most examples are short, a few are many times longer,
    so random batches carry a lot of padding. Prompts are words from a small lexicon; the
    response repeats the prompt's last 1-8 words backwards (learnable, so the loss falls).
    The word count is scaled to the tokenizer, so the median length is ~``median_tokens``
    whatever the tokenizer's granularity (bytes for the tiny one, sub-words for SmolLM2).
    """
    rng = random.Random(seed)
    lexicon = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud"]
    lexicon += ["green", "seven", "market", "orange", "window", "lamp", "quiet"]
    per_word = statistics.fmean(
        len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in lexicon
    )
    median_words = max(2.0, median_tokens / per_word)
    out = []
    for _ in range(n):
        words = max(2, round(rng.lognormvariate(math.log(median_words), 0.8)))
        text = [rng.choice(lexicon) for _ in range(words)]
        k = min(words, rng.randint(1, 8))
        out.append(Example("Repeat the last words backwards: " + " ".join(text), " ".join(text[-k:][::-1])))
    return out


def load_examples(
    data: str, tokenizer: Any, n_train: int | None, max_length: int, seed: int
) -> tuple[EncodedList, EncodedList]:
    """Train examples and held-out ones (a fresh draw, or the task's validation split)."""
    if data == "longtail":
        train_ex = longtail_examples(n_train or 2000, tokenizer, seed)
        held_out = longtail_examples(128, tokenizer, seed + 1)
        return encode(train_ex, tokenizer, max_length), encode(held_out, tokenizer, max_length)
    raw = yaml.safe_load((ROOT / "conf" / "data" / f"{data}.yaml").read_text())
    if n_train is not None:
        raw["n_train"] = n_train
    cfg = DataConfig.from_dict(raw)
    splits = load_splits(cfg)
    return encode(splits["train"], tokenizer, cfg.max_length), encode(
        splits["validation"], tokenizer, cfg.max_length
    )


# --------------------------------------------------------------------------- measurement


@dataclass
class StepClock:
    """Wall-clock time at the end of every optimizer step, taken by the same kind of probe on
    every side (ablate's ``on_log`` hook, a ``TrainerCallback``'s ``on_step_end``), so "end of
    step 1 to end of step N" means the same thing on each side and includes everything between
    steps: batch fetching and collation, forward, backward, clipping, optimizer, scheduler."""

    started: float = 0.0
    stopped: float = 0.0
    ends: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.perf_counter()

    def mark(self) -> None:
        self.ends.append(time.perf_counter())
        for hook in STEP_HOOKS:
            hook()

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
    peak_bytes: int  # CUDA max allocated, or peak process RSS on the CPU
    start_bytes: int
    load_s: float  # base load time, excluded from every timing
    threads: int  # torch threads after the run (checks nothing changed them)
    held_out: dict[str, float]  # loss and em of the trained model on Setup.held_out
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Steady-state (steps 2..N) and whole-call numbers of this run."""
        steps = len(self.clock.ends)
        steady_s = self.clock.ends[-1] - self.clock.ends[0]
        steady_tokens = sum(self.tokens[1:])
        call_s = self.clock.stopped - self.clock.started
        tail = max(1, steps // 5)
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
            # The mean of the last fifth of the steps: one batch's loss is too noisy to compare sides.
            "loss_tail": statistics.fmean(self.losses[-tail:]),
            "loss_decreased": statistics.fmean(self.losses[-tail:]) < statistics.fmean(self.losses[:tail]),
            # Loss and exact match of the trained model on the same held-out examples for every side:
            # the batches differ between sides, so train losses are not comparable, these are.
            "held_out_loss": self.held_out["loss"],
            "held_out_em": self.held_out["em"],
            "trainable_params": self.trainable_params,
            "init_checksum": self.init_checksum,
            "peak_mb": self.peak_bytes / 2**20,
            "growth_mb": (self.peak_bytes - self.start_bytes) / 2**20,
            "load_s": self.load_s,
            "threads": self.threads,
            **self.extra,
        }


def release_memory() -> None:
    """Collect garbage and hand freed memory back (glibc heap, CUDA cache), so each run starts clean.

    Without ``malloc_trim`` glibc keeps the previous run's freed arenas resident, and the next
    run's RSS growth would be understated by however much it could reuse.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS numbers are just less clean
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


def _checksum(params: Sequence[torch.nn.Parameter]) -> float:
    with torch.no_grad():
        return float(sum(p.detach().float().abs().sum() for p in params))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the sides


@dataclass(frozen=True)
class Setup:
    """Everything the sides share: the model, the encoded examples and the knobs."""

    model_cfg: ModelConfig
    quant: QuantConfig
    device: torch.device
    precision: str  # fp32 | bf16: resolved once, the same for every side
    examples: list[Encoded]
    held_out: list[Encoded]  # scored after training, the same for every side
    steps: int
    batch_size: int
    lr: float
    seed: int

    @property
    def warmup_steps(self) -> int:
        """ablate's warmup length (``cosine_with_warmup``), given to the Trainer as a step count."""
        return int(round(self.steps * WARMUP_RATIO))


def user_precision(device: torch.device) -> str:
    """What a user turns on here: bf16 where the device does bf16 natively (ablate's ``auto``)."""
    return "fp32" if autocast_for(device, "auto") is contextlib.nullcontext else "bf16"


def held_out_metrics(model: torch.nn.Module, setup: Setup, pad_id: int) -> dict[str, float]:
    batches = make_batches(setup.held_out, 32, shuffle=False, seed=0, pad_id=pad_id)
    result = evaluate(model, batches, setup.device, autocast_for(setup.device, setup.precision))
    return {"loss": float(result["loss"]), "em": float(result["em"])}


def _load(setup: Setup) -> tuple[Base, float]:
    _sync(setup.device)
    started = time.perf_counter()
    base = load_base(setup.model_cfg, setup.quant, setup.device)
    _sync(setup.device)
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
        precision=setup.precision,
        seed=setup.seed,
        progress=False,
    )
    init = _checksum(params)
    clock = StepClock()
    release_memory()
    start = _memory_now(setup.device)
    with PeakMemory(setup.device) as mem:
        clock.start()
        result = train(base.model, stack, epoch_batches, cfg, setup.device, on_log=lambda s, r: clock.mark())
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
        peak_bytes=mem.peak_bytes,
        start_bytes=start,
        load_s=load_s,
        threads=torch.get_num_threads(),
        held_out=held_out_metrics(base.model, setup, pad_id),
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


def _sampling_args(group_by_length: bool) -> dict[str, Any]:
    """The sampler flag in whichever spelling this transformers has (renamed in 5.x)."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def run_trainer(setup: Setup, round_: int, *, group_by_length: bool = False) -> Run:
    """Side B (and C with ``group_by_length``): ``peft.get_peft_model`` + ``transformers.Trainer``.

    Random sampling (or length grouping) and right padding, the model's own loss over
    full-length logits, no evaluation, logging, saving or reporting, no dataloader workers, and
    bf16 exactly when side A uses bf16 autocast.
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
    side = "peft+Trainer+gbl" if group_by_length else "peft+Trainer"
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
            bf16=setup.precision == "bf16",
            eval_strategy="no",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=setup.device.type == "cuda",
            remove_unused_columns=False,
            label_names=["labels"],
            use_cpu=setup.device.type == "cpu",
            seed=setup.seed,
            data_seed=setup.seed,
            **_sampling_args(group_by_length),
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
        release_memory()
        start = _memory_now(setup.device)
        with PeakMemory(setup.device) as mem:
            clock.start()
            trainer.train()
            clock.stop()
    return Run(
        side=side,
        round=round_,
        clock=clock,
        tokens=[int(x) for x in record["tokens"]],
        positions=[int(x) for x in record["positions"]],
        losses=record["losses"],
        trainable_params=sum(p.numel() for p in params),
        init_checksum=init,
        peak_bytes=mem.peak_bytes,
        start_bytes=start,
        load_s=load_s,
        threads=torch.get_num_threads(),
        held_out=held_out_metrics(model, setup, pad_id),
    )


RUNNERS: dict[str, Callable[[Setup, int], Run]] = {
    "ablate": run_ablate,
    "peft+Trainer": run_trainer,
    "peft+Trainer+gbl": lambda setup, r: run_trainer(setup, r, group_by_length=True),
}


# --------------------------------------------------------------------------- orchestration


def build_setup(
    *,
    model: str,
    data: str,
    device: torch.device,
    quant: str = "none",
    precision: str | None = None,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    n_train: int | None = None,
    max_length: int = 512,
    dtype: str | None = None,
) -> tuple[Setup, dict[str, Any]]:
    """The shared model config and the examples every side trains on, tokenized once."""
    precision = precision or user_precision(device)
    # The base's storage dtype: fp32 on the CPU (bf16 autocast computes in bf16 either way), bf16
    # on GPUs, as load_base's "auto" picks; a quantised base keeps its non-quantised weights so too.
    dtype = dtype or ("bfloat16" if device.type == "cuda" and precision == "bf16" else "float32")
    model_cfg = model_config(model, dtype)
    quant_cfg = QuantConfig.from_dict({"method": quant})
    # Only the tokenizer is needed here; each run loads its own fresh base.
    tokenizer = AutoTokenizer.from_pretrained(resolve(model_cfg))
    encoded, held_out = load_examples(data, tokenizer, n_train, max_length, seed)
    lengths = sorted(len(e.input_ids) for e in encoded)
    setup = Setup(
        model_cfg=model_cfg,
        quant=quant_cfg,
        device=device,
        precision=precision,
        examples=list(encoded),
        held_out=list(held_out),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    data_info = {
        "data": data,
        "n_train": len(encoded),
        "dropped": encoded.dropped,
        "length_min": lengths[0],
        "length_median": statistics.median(lengths),
        "length_mean": statistics.fmean(lengths),
        "length_p95": lengths[int(0.95 * (len(lengths) - 1))],
        "length_max": lengths[-1],
    }
    return setup, data_info


def measure(setup: Setup, rounds: int, sides: Sequence[str] = SIDES, echo: bool = True) -> list[Run]:
    """Interleave the sides (A B C A B C ...) and sanity-check every round.

    A short untimed run of every side comes first: the first run in a process pays one-off costs
    (CUDA context and cuBLAS heuristics, allocator growth, lazy imports) that belong to no side.
    """
    for side in sides:
        release_memory()
        RUNNERS[side](dataclasses.replace(setup, steps=min(setup.steps, 4), held_out=setup.held_out[:8]), 0)
    runs: list[Run] = []
    for r in range(1, rounds + 1):
        for side in sides:
            release_memory()
            run = RUNNERS[side](setup, r)
            counts = {len(run.clock.ends), len(run.tokens), len(run.positions), len(run.losses)}
            assert counts == {setup.steps}, f"{side}: expected {setup.steps} steps, recorded {counts}"
            s = run.summary()
            if echo:
                print(
                    f"  [round {r}/{rounds}] {side:>16}: {s['tokens_per_s']:9.1f} tok/s  "
                    f"{s['s_per_step']:.3f} s/step  padding {s['padding_fraction']:.1%}  "
                    f"loss {s['loss_first']:.3f} -> {s['loss_tail']:.3f}, held-out {s['held_out_loss']:.3f}"
                    + ("" if s["loss_decreased"] else "  WARNING: loss did not decrease"),
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(run)
            del run
        mine = runs[-len(sides) :]
        counts = {run.trainable_params for run in mine}
        assert len(counts) == 1, f"trainable parameters differ between sides: {counts}"
    return runs


SUMMARY_KEYS = (
    "tokens_per_s",
    "s_per_step",
    "tokens_per_step",
    "call_tokens_per_s",
    "call_s",
    "first_step_s",
    "padding_fraction",
    "peak_mb",
    "growth_mb",
    "loss_tail",
    "held_out_loss",
    "held_out_em",
)


def summarise(runs: list[Run], sides: Sequence[str] = SIDES) -> dict[str, Any]:
    """Medians per side, the headline ratios against each peer, and the per-round ratios."""
    rows = [r.summary() for r in runs]
    out: dict[str, dict[str, Any]] = {}
    for side in sides:
        mine = [row for row in rows if row["side"] == side]
        out[side] = {k: statistics.median(row[k] for row in mine) for k in SUMMARY_KEYS}
        out[side].update(
            trainable_params=mine[0]["trainable_params"],
            loss_first=[row["loss_first"] for row in mine],
            loss_last=[row["loss_tail"] for row in mine],
            all_losses_decreased=all(row["loss_decreased"] for row in mine),
        )
    ratios: dict[str, Any] = {}
    a_rows = [row for row in rows if row["side"] == "ablate"]
    for peer in sides[1:]:
        p_rows = [row for row in rows if row["side"] == peer]
        ratios[peer] = {
            "tokens_per_s": out["ablate"]["tokens_per_s"] / out[peer]["tokens_per_s"],
            "per_round": [a["tokens_per_s"] / p["tokens_per_s"] for a, p in zip(a_rows, p_rows, strict=True)],
            "call_tokens_per_s": out["ablate"]["call_tokens_per_s"] / out[peer]["call_tokens_per_s"],
            "peak_memory": out["ablate"]["peak_mb"] / out[peer]["peak_mb"],
            "held_out_loss_difference": out["ablate"]["held_out_loss"] - out[peer]["held_out_loss"],
        }
    return {
        "sides": out,
        "ratios": ratios,
        "same_lora_init": len({round(r.init_checksum, 3) for r in runs[: len(sides)]}) == 1,
        "runs": rows,
    }


def table(summary: dict[str, Any]) -> list[str]:
    """Markdown rows, one per side, and a line of ratios against each peer."""
    lines = [
        "| side | tokens/s | s/step | real tokens/step | padding | tokens/s (whole call) "
        "| peak memory (MB) | train loss first → last fifth | held-out loss | trainable params |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for side, x in summary["sides"].items():
        losses = ", ".join(
            f"{f:.2f} → {la:.2f}" for f, la in zip(x["loss_first"], x["loss_last"], strict=True)
        )
        lines.append(
            f"| {side} | {x['tokens_per_s']:.0f} | {x['s_per_step']:.3f} | {x['tokens_per_step']:.0f} "
            f"| {x['padding_fraction']:.1%} | {x['call_tokens_per_s']:.0f} | {x['peak_mb']:.0f} "
            f"| {losses} | {x['held_out_loss']:.3f} | {x['trainable_params']:,} |"
        )
    lines.append("")
    for peer, r in summary["ratios"].items():
        per_round = ", ".join(f"{v:.2f}" for v in r["per_round"])
        lines.append(
            f"- ablate / {peer}: **{r['tokens_per_s']:.2f}x** real tokens/s (per round {per_round}; "
            f"whole call {r['call_tokens_per_s']:.2f}x; peak memory {r['peak_memory']:.2f}x; "
            f"held-out loss difference {r['held_out_loss_difference']:+.3f})"
        )
    return lines


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training throughput of ablate's loop vs peft + transformers.Trainer (a ratio).",
    )
    parser.add_argument("--model", choices=MODELS, default="smollm2")
    parser.add_argument("--data", default="longtail", help="longtail (generated) or a conf/data task")
    parser.add_argument("--quant", default="none", help="none | nf4 | fp4 | int8 (the base of both sides)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: what a user picks"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (>= 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved sides")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (conf/peft/lora.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all)")
    parser.add_argument("--n-train", type=int, default=None, help="train examples (default: the task's)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 2 steps, 1 round, 32 examples: the code path, seconds",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.steps, args.rounds, args.n_train = "tiny", 2, 1, args.n_train or 32
    if args.steps < 2:
        parser.error("--steps must be >= 2 (steady-state throughput needs steps after the first)")
    for name in ("batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup, data_info = build_setup(
        model=args.model, data=args.data, device=device, quant=args.quant, precision=args.precision,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, n_train=args.n_train,
    )  # fmt: skip
    runs = measure(setup, args.rounds)
    summary = summarise(runs)
    meta = {
        "benchmark": "throughput",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {**vars(args), "out_dir": str(args.out_dir), "precision": setup.precision},
        "data": data_info,
        "environment": environment(device),
    }
    lines = [f"## Training throughput ({args.model}, {args.data}, {setup.precision}, quant {args.quant})", ""]
    lines += table(summary)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"throughput-{args.model}-{args.data}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, **summary}, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
