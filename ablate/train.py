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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ablate import signals
from ablate.components.stack import Stack
from ablate.device import autocast_for
from ablate.errors import ConfigError
from ablate.metrics import forward_logits, token_loss_sum
from ablate.schema import TrainConfig

Batch = dict[str, torch.Tensor]


class NonFiniteLoss(RuntimeError):
    """The loss or a gradient norm is NaN or inf: the run cannot go on (recorded as pruned)."""

    ablate_state = "pruned"  # an outcome of the configuration (e.g. a learning rate too high), not a crash
    reason = "nonfinite_loss"

    def __init__(self, step: int, what: str, value: float) -> None:
        self.step = step
        super().__init__(f"nonfinite_loss at step {step}: {what}={value}")


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


def cosine_with_warmup(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(round(steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


#: train.optimizer -> the bitsandbytes class of QLoRA's paged optimizers (Dettmers et al. 2023: optimizer
#: states in paged memory, evicted to the host when a long sequence spikes GPU memory)
PAGED = {"paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}


def make_optimizer(groups: list[dict[str, Any]], name: str) -> torch.optim.Optimizer:
    """AdamW over the per-component groups (each its own learning rate), or its paged variant."""
    if name == "adamw":
        return torch.optim.AdamW(groups)
    try:
        import bitsandbytes as bnb

        cls = getattr(bnb.optim, PAGED[name])
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            "train.optimizer", name, f"needs bitsandbytes with paged optimizers ({type(exc).__name__}: {exc})"
        ) from None
    return cls(groups)


def train(
    model: torch.nn.Module,
    stack: Stack,
    epoch_batches: Callable[[int], list[Batch]],
    cfg: TrainConfig,
    device: torch.device,
    *,
    evaluate: Callable[[], dict[str, Any]] | None = None,
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
    optimizer = make_optimizer(groups, cfg.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.steps, cfg.warmup_ratio))
    autocast = autocast_for(device, cfg.precision)
    result = TrainResult()
    micro = _micro_batches(epoch_batches)
    bar = _bar(cfg)
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            signals.check()  # a SIGTERM/SIGINT whose first raise was swallowed stops the run here
            started = time.perf_counter()
            if cfg.fault.step_delay_s:  # a slow worker, for drills (kill -9 mid-trial)
                time.sleep(cfg.fault.step_delay_s)
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
                metrics = {f"val_{k}": v for k, v in evaluate().items() if k not in ("examples", "items")}
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
