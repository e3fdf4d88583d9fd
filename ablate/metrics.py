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
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device, autocast=None
) -> dict[str, float]:
    """Token-mean response loss and exact-match rate over the batches."""
    was_training = model.training
    model.eval()
    loss_sum, tokens, exact, examples = 0.0, 0, 0, 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else nullcontext():
                logits, targets = forward_logits(model, batch)
            mask = targets != -100
            loss_sum += float(token_loss_sum(logits, targets))
            tokens += int(mask.sum())
            correct = (logits.argmax(-1) == targets) | ~mask
            exact += int(correct.all(dim=1).sum())
            examples += targets.shape[0]
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(tokens, 1), "em": exact / max(examples, 1), "examples": examples}
