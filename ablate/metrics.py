"""Task metrics: response-token loss and exact match, in one teacher-forced pass.

Exact match is "greedy decoding reproduces the reference answer and then
stops": with the answer followed by EOS as the labels, greedy decoding emits
the answer iff the argmax at every response position equals the next
reference token. Checking that under teacher forcing is mathematically the
same as running ``generate`` greedily, and costs one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F


def keep_last(labels: torch.Tensor) -> int:
    """How many final positions' logits the loss needs (the lm_head runs only there)."""
    has_label = (labels != -100).any(dim=0).nonzero()
    first = int(has_label.min()) if len(has_label) else labels.shape[1] - 1
    return labels.shape[1] - max(first - 1, 0)


def forward_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) aligned for next-token prediction on the response positions only."""
    labels = batch["labels"]
    k = keep_last(labels)
    # use_cache=False: a training/eval pass has no use for a key/value cache (transformers builds one by default).
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=k,
        use_cache=False,
    )
    logits = out.logits[:, -k:-1] if k > 1 else out.logits[:, :0]
    targets = labels[:, labels.shape[1] - k + 1 :]
    return logits, targets


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    autocast=None,
    *,
    per_item: bool = False,
) -> dict[str, Any]:
    """Token-mean response loss and exact-match rate over the batches.

    With ``per_item`` the result also holds ``items``: for every example (by its
    ``index`` in the split, ascending) whether it was an exact match and its mean
    response-token loss. The report resamples these to put test items, not only
    seeds, into its confidence intervals.
    """
    was_training = model.training
    model.eval()
    loss_sum, tokens, exact, examples = 0.0, 0, 0, 0
    rows: list[tuple[int, int, float]] = []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else nullcontext():
                logits, targets = forward_logits(model, batch)
            mask = targets != -100
            per_token = F.cross_entropy(
                logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            loss_sum += float(per_token.sum())
            tokens += int(mask.sum())
            correct = ((logits.argmax(-1) == targets) | ~mask).all(dim=1)
            exact += int(correct.sum())
            examples += targets.shape[0]
            if per_item:
                item_loss = per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
                index = batch.get("index", torch.arange(examples - targets.shape[0], examples))
                rows += zip(index.tolist(), correct.int().tolist(), item_loss.tolist(), strict=True)
    finally:
        model.train(was_training)
    out: dict[str, Any] = {
        "loss": loss_sum / max(tokens, 1),
        "em": exact / max(examples, 1),
        "examples": examples,
    }
    if per_item:
        rows.sort()
        out["items"] = {
            "index": [r[0] for r in rows],
            "correct": [r[1] for r in rows],
            "loss": [r[2] for r in rows],
        }
    return out
