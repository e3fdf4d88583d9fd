"""The one training loop.

AdamW with one parameter group per component (each its own learning rate),
gradient accumulation, linear warmup then cosine decay, bf16 autocast where
the device supports it, per-component gradient norms (do the update types
interfere?), and an evaluation hook every ``eval_every`` steps that studies
use for pruning. It knows nothing about Optuna or MLflow: callers pass
callbacks, and an exception raised by a callback (e.g. a pruning signal)
simply propagates.

A non-finite loss or gradient norm stops training with ``NonFiniteLoss`` (the
study records the trial as pruned, reason ``nonfinite_loss``) instead of
stepping the optimizer on garbage. ``FaultConfig`` injects a NaN loss or a CUDA
out-of-memory error at a chosen step, so tests and drills can check that a study
survives them on any machine.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ablate.components import Stack
from ablate.errors import ConfigError, require
from ablate.metrics import forward_logits, token_loss_sum

Batch = dict[str, torch.Tensor]


class NonFiniteLoss(RuntimeError):
    """The loss or a gradient norm is NaN or inf: the run cannot go on (recorded as pruned)."""

    ablate_state = "pruned"  # an outcome of the configuration (e.g. a learning rate too high), not a crash
    reason = "nonfinite_loss"

    def __init__(self, step: int, what: str, value: float) -> None:
        self.step = step
        super().__init__(f"nonfinite_loss at step {step}: {what}={value}")


@dataclass
class FaultConfig:
    """Fault injection (tests, drills); everything off by default."""

    nan_at_step: int | None = None  # the loss becomes NaN at this optimizer step
    oom_at_step: int | None = None  # torch.cuda.OutOfMemoryError at this step ...
    oom_times: int = 1  # ... in this many attempts in a row (2: the half-batch retry fails too)
    # search trial numbers (of every arm) that get the faults; None: all runs. A mapping gives each
    # its own: {0: {oom_at_step: 2}, 3: {nan_at_step: 1}} (fields above, over the ones set above)
    trials: list[int] | dict[int, dict[str, Any]] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> FaultConfig:
        if data is None:
            return cls()
        require(isinstance(data, dict), "train.fault", data, "a mapping, e.g. {nan_at_step: 3}")
        for key, value in data.items():
            require(key in cls.__dataclass_fields__, f"train.fault.{key}", value, "unknown field")
        cfg = cls(**data)
        for key in ("nan_at_step", "oom_at_step"):
            value = getattr(cfg, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"train.fault.{key}", value, "must be a step >= 1 or null")
        if not isinstance(cfg.oom_times, int) or isinstance(cfg.oom_times, bool) or cfg.oom_times < 0:
            raise ConfigError("train.fault.oom_times", cfg.oom_times, "must be an integer >= 0")
        if isinstance(cfg.trials, dict):
            per = {}
            for number, fields in cfg.trials.items():
                number = int(number) if isinstance(number, str) and number.isdigit() else number
                ok = isinstance(number, int) and not isinstance(number, bool) and number >= 0
                require(ok, "train.fault.trials", cfg.trials, "trial numbers >= 0 as keys")
                require(
                    isinstance(fields, dict) and "trials" not in fields,
                    f"train.fault.trials.{number}",
                    fields,
                    "a mapping of fault fields, e.g. {oom_at_step: 2}",
                )
                per[number] = dict(fields)
                cls.from_dict({**data, "trials": None, **fields})  # each trial's faults are valid
            cfg.trials = per
        elif cfg.trials is not None:
            ok = isinstance(cfg.trials, list) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in cfg.trials
            )
            require(ok, "train.fault.trials", cfg.trials, "a list of trial numbers >= 0, or null")
        return cfg

    def for_trial(self, number: int | None) -> FaultConfig:
        """The faults of search trial ``number`` (None: a replicate run, which ``trials`` never names)."""
        if self.trials is None:
            return self
        if number is None or number not in self.trials:
            return FaultConfig()
        if isinstance(self.trials, dict):
            base = {k: getattr(self, k) for k in ("nan_at_step", "oom_at_step", "oom_times")}
            return FaultConfig(**{**base, **self.trials[number]})
        return FaultConfig(self.nan_at_step, self.oom_at_step, self.oom_times)

    @property
    def active(self) -> bool:
        return self.nan_at_step is not None or (self.oom_at_step is not None and self.oom_times > 0)


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.1  # share of steps with linear warmup before cosine decay
    max_grad_norm: float = 1.0  # clip the global norm; 0 disables
    eval_every: int = 50  # steps between validation evaluations (the pruning hook)
    eval_batch_size: int = 32
    precision: str = "auto"  # auto: bf16 autocast on GPUs and CPUs with native bf16, else fp32
    seed: int = 0
    progress: bool = True  # tqdm step bar on stderr
    fault: FaultConfig = field(default_factory=FaultConfig)  # fault injection, off by default

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = cls.__dataclass_fields__
        for key, value in data.items():
            require(key in known, f"train.{key}", value, f"unknown field (known: {', '.join(known)})")
        cfg = cls(**{**data, "fault": FaultConfig.from_dict(data.get("fault"))})
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"train.{name}", value, "must be an integer > 0")
        require(0 <= cfg.warmup_ratio < 1, "train.warmup_ratio", cfg.warmup_ratio, "must be in [0, 1)")
        require(cfg.max_grad_norm >= 0, "train.max_grad_norm", cfg.max_grad_norm, "must be >= 0")
        require(
            cfg.precision in ("auto", "fp32", "bf16"),
            "train.precision",
            cfg.precision,
            "must be auto, fp32 or bf16",
        )
        return cfg


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per optimizer step
    evals: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    steps: int = 0
    tokens: int = 0  # real (non-pad) tokens processed in training
    seconds: float = 0.0  # training wall time, evaluations excluded

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def step_time_s(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0


def native_bf16_cpu() -> bool:
    """Does this CPU do bf16 arithmetic natively (AVX512-BF16 or AMX)? There, bf16 autocast is
    faster than fp32; elsewhere it is emulated and slower, so ``auto`` stays fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check, so no bf16 by default
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    """bf16 autocast for ``bf16``, and for ``auto`` on GPUs with bf16 and CPUs with native bf16
    (checked against fp32 on the tiny model in tests/test_precision.py; the trainable
    component weights and the optimizer state stay fp32 either way)."""
    use_bf16 = precision == "bf16" or (
        precision == "auto"
        and (
            (device.type == "cuda" and torch.cuda.is_bf16_supported())
            or (device.type == "cpu" and native_bf16_cpu())
        )
    )
    if not use_bf16:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def cosine_with_warmup(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(round(steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def train(
    model: torch.nn.Module,
    stack: Stack,
    epoch_batches: Callable[[int], list[Batch]],
    cfg: TrainConfig,
    device: torch.device,
    *,
    evaluate: Callable[[], dict[str, float]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the stack's parameters for ``cfg.steps`` optimizer steps.

    ``epoch_batches(epoch)`` returns that epoch's (shuffled, length-grouped)
    micro-batches; ``evaluate()`` returns validation metrics; ``on_eval`` sees
    them (and may raise to stop the run, e.g. pruning).
    """
    groups = stack.param_groups()
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.steps, cfg.warmup_ratio))
    autocast = autocast_for(device, cfg.precision)
    result = TrainResult()
    micro = _micro_batches(epoch_batches)
    bar = _bar(cfg)
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            started = time.perf_counter()
            if step == cfg.fault.oom_at_step and cfg.fault.oom_times > 0:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (injected: train.fault.oom_at_step={step})"
                )
            chunk = [next(micro) for _ in range(cfg.grad_accum)]
            n_targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in chunk)
            loss_total = 0.0
            for batch in chunk:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast():
                    logits, targets = forward_logits(model, batch)
                # Token-mean over the whole accumulated step, not a mean of micro-batch means.
                loss = token_loss_sum(logits, targets) / max(n_targets, 1)
                if step == cfg.fault.nan_at_step:
                    loss = loss * float("nan")
                if not torch.isfinite(loss.detach()):
                    raise NonFiniteLoss(step, "train_loss", float(loss.detach()))
                loss.backward()
                loss_total += float(loss.detach())
                result.tokens += int(batch["attention_mask"].sum())
            row: dict[str, float] = {"train_loss": loss_total, "lr": scheduler.get_last_lr()[0]}
            for g in groups:
                norms = [p.grad.detach().norm() for p in g["params"] if p.grad is not None]
                row[f"grad_norm/{g['name']}"] = float(torch.stack(norms).norm()) if norms else 0.0
                if not math.isfinite(row[f"grad_norm/{g['name']}"]):
                    raise NonFiniteLoss(step, f"grad_norm/{g['name']}", row[f"grad_norm/{g['name']}"])
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.seconds += time.perf_counter() - started
            result.steps = step
            row["step"] = step
            result.history.append(row)
            if on_log:
                on_log(step, row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total:.3f}")
            if evaluate and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics = {f"val_{k}": v for k, v in evaluate().items() if k != "examples"}
                metrics["step"] = step
                result.evals.append(metrics)
                if on_log:
                    on_log(step, metrics)
                if on_eval:
                    on_eval(step, metrics)
                model.train()
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    return result


def _micro_batches(epoch_batches: Callable[[int], list[Batch]]):
    epoch = 0
    while True:
        batches = epoch_batches(epoch)
        if not batches:
            raise ValueError("no training batches")
        yield from batches
        epoch += 1


def _bar(cfg: TrainConfig):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.steps, desc="train", unit="step", disable=not cfg.progress, leave=False, dynamic_ncols=True
    )
