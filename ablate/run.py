"""One trial: attach components to a loaded base, train, evaluate, record, detach.

``run_trial`` is the seam between the study layer above (which chooses the
config and may stop a trial through ``on_eval``) and the model, data and
training stages below. Every user mistake it can hit (targets, context
lengths) raises before a run is opened, so a bad config never leaves a
half-written MLflow run.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ablate.components import stack as components
from ablate.components.stack import Stack
from ablate.data import DataConfig, load_splits
from ablate.data.tokenize import EncodedList, encode, make_batches
from ablate.device import autocast_for
from ablate.metrics import evaluate
from ablate.models import Base
from ablate.schema import TrialConfig
from ablate.tracking import Recorder, Tracker
from ablate.train import train

SPLITS = ("train", "validation", "test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def prepare_data(cfg: DataConfig, tokenizer: Any) -> dict[str, EncodedList]:
    """Load and tokenize the three splits once; trials reuse the result."""
    splits = load_splits(cfg)
    return {name: encode(splits[name], tokenizer, cfg.max_length) for name in SPLITS}


class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or process peak RSS on CPU.

    On CPU a sampling thread reads the RSS every 50 ms, so the peak belongs to
    this trial, not to everything the process did before it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            proc = psutil.Process()
            self.peak_bytes = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.05):
                    self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"


@dataclasses.dataclass
class Outcome:
    metrics: dict[str, float]
    run_id: str | None
    #: per item of the final evaluation split: ``index``, ``correct`` (0/1), ``loss`` (mean response-token
    #: loss), and with ``eval.zero_shot`` the same for the bare base: ``zero_shot_correct``, ``zero_shot_loss``
    items: dict[str, list] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Scorer:
    """One trial's validation passes and its final, per-item evaluation on ``eval_split``.

    A trial scored on the validation split (a search trial) reuses the validation pass train() ran
    at its last step instead of a second pass over the same batches. Gate means are reset before
    every pass, so the recorded ones describe exactly one evaluation.
    """

    model: torch.nn.Module
    stack: Stack
    device: torch.device
    autocast: Callable[[], Any]
    val_batches: list[dict[str, torch.Tensor]]
    final_batches: list[dict[str, torch.Tensor]]
    eval_split: str
    last: dict[str, Any] | None = None

    def validate(self) -> dict[str, Any]:
        self.stack.reset_gates()
        reuse = self.eval_split == "validation"
        self.last = evaluate(self.model, self.val_batches, self.device, self.autocast, per_item=reuse)
        return self.last

    def final(self) -> dict[str, Any]:
        if self.eval_split == "validation" and self.last is not None:
            return self.last  # train() returned, so its last validation pass was at its last step
        self.stack.reset_gates()
        return evaluate(self.model, self.final_batches, self.device, self.autocast, per_item=True)


def run_trial(
    cfg: TrialConfig,
    base: Base,
    data: Mapping[str, EncodedList],
    tracker: Tracker,
    *,
    run_name: str | None = None,
    parent: Recorder | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    eval_split: str = "test",
) -> Outcome:
    """Train and evaluate one configuration on the shared base; returns its final metrics."""
    model, device = base.model, base.device
    seed_everything(cfg.train.seed)
    stack = components.attach(model, cfg.peft, cfg.data.max_length)  # ConfigError: nothing recorded yet
    try:
        pad_id = base.tokenizer.pad_token_id
        bs, ebs, seed = cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.seed

        def epoch_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
            return make_batches(data["train"], bs, shuffle=True, seed=seed * 1000 + epoch, pad_id=pad_id)

        val_batches = make_batches(data["validation"], ebs, shuffle=False, seed=0, pad_id=pad_id)
        final_batches = make_batches(data[eval_split], ebs, shuffle=False, seed=0, pad_id=pad_id)
        autocast = autocast_for(device, cfg.train.precision)
        counts = stack.num_parameters()
        trainable = sum(counts.values())
        all_tags = {
            "arm": cfg.arm_name,
            "components": ",".join(cfg.arm),
            "quant": cfg.quant.method,
            **(tags or {}),
        }
        with tracker.run(run_name or cfg.arm_name, tags=all_tags, parent=parent) as rec:
            rec.log_params({**_plain(cfg), **(params or {})})
            rec.log_dict(_plain(cfg), "config.yaml")
            if rec.run_id is not None:  # the splits this run reads, as MLflow dataset inputs
                rec.log_datasets(dataset_inputs(cfg.data, data, ("train", "validation", eval_split)))
            scorer = _Scorer(model, stack, device, autocast, val_batches, final_batches, eval_split)
            started = time.perf_counter()
            with PeakMemory(device) as mem:
                result = train(
                    model,
                    stack,
                    epoch_batches,
                    cfg.train,
                    device,
                    evaluate=scorer.validate,
                    on_log=lambda step, row: rec.log_metrics(row, step),
                    on_eval=on_eval,
                )
                final = scorer.final()
                gate_means = stack.gate_metrics()
            metrics: dict[str, float] = {
                f"{eval_split}_loss": final["loss"],
                f"{eval_split}_em": final["em"],
                "val_loss": result.evals[-1]["val_loss"] if result.evals else float("nan"),
                "val_em": result.evals[-1]["val_em"] if result.evals else float("nan"),
                "trainable_params": trainable,
                "trainable_pct": 100.0 * trainable / base.total_params,
                "tokens_per_s": result.tokens_per_s,
                "step_time_s": result.step_time_s,
                "train_seconds": result.seconds,
                "peak_mem_mb": mem.peak_bytes / 2**20,
                "padding_fraction": epoch_batches(0).padding_fraction(),
                "steps": result.steps,
            }
            metrics.update({f"params/{n}": c for n, c in counts.items()})
            metrics.update(gate_means)  # gate/<component>/<layer>: which method the trained model leans on
            if cfg.eval.knockout and len(stack.names) > 1:
                metrics.update(_knockouts(scorer, data[eval_split], final["items"], cfg, pad_id))
            if cfg.eval.zero_shot:
                with stack.knocked_out(stack.names):
                    zero = evaluate(model, final_batches, device, autocast, per_item=True)
                metrics[f"zero_shot/{eval_split}_em"] = zero["em"]
                # the bare base per item, for the LoRA x X interaction: (LoRA+X) - LoRA - X + zero-shot
                final["items"]["zero_shot_correct"] = zero["items"]["correct"]
                final["items"]["zero_shot_loss"] = zero["items"]["loss"]
            metrics["wall_s"] = time.perf_counter() - started
            # val_* were logged at each evaluation; log the rest once, at the last step.
            rec.log_metrics({k: v for k, v in metrics.items() if not k.startswith("val_")}, result.steps)
            rec.set_tags({"state": "complete", "peak_mem_kind": mem.kind})
            _log_items(rec, final["items"], eval_split)
            if cfg.eval.save_components:
                with tempfile.TemporaryDirectory() as tmp:
                    components.save(stack, tmp)
                    rec.log_artifact(tmp, "components")
            return Outcome(metrics, rec.run_id, final["items"])
    finally:
        stack.detach()


def knockout_subset(n: int, k: int | None) -> list[int]:
    """The test items knockouts score: ``k`` of ``n`` drawn with a fixed seed (sorted), so every
    arm and seed of a study is knocked out on the same items; all of them when ``k`` is None or >= n."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(0).sample(range(n), k))


def _knockouts(
    scorer: _Scorer, split: EncodedList, items: Mapping[str, list], cfg: TrialConfig, pad_id: int
) -> dict[str, float]:
    """EM with each component switched off, on ``eval.knockout_items`` of the split, beside the full
    model's EM on the same items (read from its per-item record, no extra pass).

    A knockout costs a full pass over the items; with 872 test items and two components the passes
    were two thirds of a replicate's evaluation, while the report needs one EM change per component
    (the mean over seeds), which a fixed subset estimates (issue 25 item 6; benchmarks/README.md)."""
    chosen = knockout_subset(len(split), cfg.eval.knockout_items)
    batches = make_batches(
        [split[i] for i in chosen], cfg.train.eval_batch_size, shuffle=False, seed=0, pad_id=pad_id
    )
    correct = dict(zip(items["index"], items["correct"], strict=True))
    split_name = scorer.eval_split
    out = {
        f"knockout_base/{split_name}_em": sum(correct[i] for i in chosen) / len(chosen),
        "knockout_items": len(chosen),
    }
    for name in scorer.stack.names:
        with scorer.stack.knocked_out([name]):
            out[f"knockout/{name}/{split_name}_em"] = evaluate(
                scorer.model, batches, scorer.device, scorer.autocast
            )["em"]
    return out


def dataset_inputs(cfg: DataConfig, data: Mapping[str, EncodedList], splits: tuple[str, ...]) -> list[dict]:
    """One record per split a run reads (a search trial never reads the test split): name, source,
    row count, and a digest of the token ids and labels the model actually saw."""
    import hashlib
    import json

    if cfg.name == "hf":
        label, kind, source = (
            cfg.hf_name or "hf",
            "hugging_face",
            {"path": cfg.hf_name, "config": cfg.hf_config},
        )
    elif cfg.name == "file":
        label, kind = Path(cfg.path or "file").stem, "local"
        source = {"uri": cfg.path, "validation": cfg.validation_path, "test": cfg.test_path}
    else:
        label, kind = cfg.name, "code"
        source = {"generator": f"ablate.data.tasks:{cfg.name}", "options": cfg.task_options, "seed": cfg.seed}
    out = []
    for split in dict.fromkeys(splits):
        rows = data[split]
        digest = getattr(
            rows, "digest", None
        )  # an EncodedList keeps it: hashed once per study, not per trial
        if digest is None:
            h = hashlib.sha256()
            for e in rows:
                h.update(json.dumps([e.input_ids, e.labels]).encode())
            digest = h.hexdigest()[:12]
            if isinstance(rows, EncodedList):
                rows.digest = digest
        out.append(
            {
                "name": f"{label}.{split}",
                "digest": digest,
                "source_type": kind,
                "source": {**source, "split": split, "max_length": cfg.max_length},
                "rows": len(data[split]),
                "context": split,
                "profile": {"dropped_over_max_length": getattr(data[split], "dropped", 0)},
                "schema": {
                    "mlflow_colspec": [
                        {"type": "array", "items": {"type": "long"}, "name": "input_ids", "required": True},
                        {"type": "array", "items": {"type": "long"}, "name": "labels", "required": True},
                    ]
                },
            }
        )
    return out


ITEMS_ARTIFACT = "items"


def _log_items(rec: Recorder, items: Mapping[str, list], split: str) -> None:
    """Per-item outcomes of the final evaluation as ``items/<split>.parquet`` (one row per item)."""
    import pandas as pd

    if rec.run_id is None:  # tracking=none records nothing
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{split}.parquet"
        pd.DataFrame(dict(items)).to_parquet(path, index=False)
        rec.log_artifact(path, ITEMS_ARTIFACT)


def _plain(cfg: TrialConfig) -> dict[str, Any]:
    return {
        "arm": cfg.arm_name,
        "peft": {n: c.to_dict() for n, c in cfg.peft.items()},
        **{g: getattr(cfg, g).model_dump() for g in ("model", "quant", "data", "train", "eval")},
    }


# --------------------------------------------------------------------------- out of memory


class OutOfMemory(RuntimeError):
    """Out of memory even at the halved micro-batch (or at micro-batch 1): the trial fails with
    reason ``oom`` and the study goes on, as a non-finite loss (``train.NonFiniteLoss``) is pruned."""

    reason = "oom"


def with_oom_retry(
    attempt: Callable[[TrialConfig, bool], Outcome],
    cfg: TrialConfig,
    note: Callable[[dict[str, Any]], None],
    echo: Callable[[str], None],
) -> Outcome:
    """``attempt(cfg, retry=False)``; on a CUDA out-of-memory error once more with half the
    micro-batch and twice the accumulation: the same effective batch (and so the same
    configuration), less activation memory. The OOM'd run stays in MLflow as FAILED; the retry is
    a new run tagged oom_retry, and ``note`` records what it changed. A second OOM (or
    micro-batch 1) raises ``OutOfMemory``."""
    try:
        return attempt(cfg, False)
    except torch.cuda.OutOfMemoryError as first:
        free_memory()
        retry = halved(cfg)
        if retry is None:
            raise OutOfMemory(f"oom: micro-batch 1 is out of memory: {first}") from first
        micro, accum = retry.train.batch_size, retry.train.grad_accum
        note({"batch_size": micro, "grad_accum": accum, "error": str(first)[:500]})
        echo(f"out of memory; retrying with micro-batch {micro} x {accum} accumulation")
    try:
        outcome = attempt(retry, True)
    except torch.cuda.OutOfMemoryError as second:
        free_memory()
        raise OutOfMemory(f"oom: out of memory again at micro-batch {micro}: {second}") from second
    outcome.metrics["oom_retry"] = 1
    return outcome


def halved(cfg: TrialConfig) -> TrialConfig | None:
    """``cfg`` with half the micro-batch and twice the accumulation, so the same effective batch
    (an odd micro-batch b goes to its largest divisor <= b/2), one injected OOM fewer; None when
    the micro-batch is already 1."""
    b = cfg.train.batch_size
    if b < 2:
        return None
    micro = max(d for d in range(1, b // 2 + 1) if b % d == 0)
    retry = copy.deepcopy(cfg)
    retry.train.batch_size = micro
    retry.train.grad_accum = cfg.train.grad_accum * (b // micro)
    retry.train.fault.oom_times = max(cfg.train.fault.oom_times - 1, 0)
    return retry


def free_memory() -> None:
    """What the out-of-memory attempt held (activations, optimizer state) back to the allocator."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
