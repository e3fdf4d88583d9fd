"""Examples -> token ids with prompt-masked labels, and length-grouped batches.

The response ends with the eos token and only response tokens carry labels,
so "every label is the argmax under teacher forcing" means exactly "greedy
decoding reproduces the answer and then stops". Over-long examples are
dropped, never truncated: a cut-off answer would make exact match meaningless.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ablate.data.config import Example
from ablate.errors import ConfigError

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index


@dataclass(frozen=True)
class Encoded:
    """One example's ids; ``labels`` is ``IGNORE_INDEX`` on the prompt, ids on the response."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_prompt(self) -> int:
        """Number of prompt tokens, i.e. where generation starts."""
        return sum(1 for label in self.labels if label == IGNORE_INDEX)


class EncodedList(list[Encoded]):
    """The kept examples, in input order; ``dropped`` counts those over ``max_length``."""

    def __init__(self, items: Iterable[Encoded] = (), dropped: int = 0) -> None:
        super().__init__(items)
        self.dropped = dropped


def prompt_ids(prompts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each prompt, ending where the model's answer begins.

    With a chat template: one user turn plus the generation prompt (the
    template supplies its own special tokens). Without one: optional bos,
    then ``prompt + "\\n"``.
    """
    if getattr(tokenizer, "chat_template", None):
        # tokenize=False and one batched tokenizer call is what tokenize=True
        # does internally (add_special_tokens=False), only much faster.
        convs = [[{"role": "user", "content": p}] for p in prompts]
        texts = tokenizer.apply_chat_template(convs, add_generation_prompt=True, tokenize=False)
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer([p + "\n" for p in prompts], add_special_tokens=False)["input_ids"]
    return [bos + list(x) for x in ids]


def response_ids(responses: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each response followed by eos, the tokens the loss is on."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token")
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [list(x) + [eos] for x in ids]


def encode(examples: Sequence[Example], tokenizer: Any, max_length: int) -> EncodedList:
    """Encode examples; drop (and count in ``.dropped``) those longer than ``max_length``.

    Raises ConfigError on ``data.max_length`` if nothing fits.
    """
    if not examples:
        return EncodedList()
    prompts = prompt_ids([ex.prompt for ex in examples], tokenizer)
    responses = response_ids([ex.response for ex in examples], tokenizer)
    kept = [
        Encoded(p + r, [IGNORE_INDEX] * len(p) + r)
        for p, r in zip(prompts, responses, strict=True)
        if len(p) + len(r) <= max_length
    ]
    if not kept:
        longest = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
        reason = f"all {len(examples)} examples are longer (up to {longest} tokens)"
        raise ConfigError("data.max_length", max_length, reason)
    return EncodedList(kept, dropped=len(examples) - len(kept))


def make_batches(
    encoded: Sequence[Encoded], batch_size: int, *, shuffle: bool, seed: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of similar-length examples.

    Sorting by length before chunking keeps padding (wasted compute) low;
    with ``shuffle`` the order of equal-length examples and the order of the
    batches are drawn from ``seed``, so an epoch is random yet reproducible.
    Without ``shuffle`` batches come shortest first, ties in input order. Each batch
    carries ``index``, the examples' positions in ``encoded``, so per-item outcomes can
    be recorded against a fixed item order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(encoded)))
    if shuffle:
        rng.shuffle(order)  # the stable sort below keeps this order among equal lengths
    order.sort(key=lambda i: len(encoded[i].input_ids))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(chunks)
    batches = []
    for chunk in chunks:
        batch = collate([encoded[i] for i in chunk], pad_id)
        batch["index"] = torch.tensor(chunk, dtype=torch.long)  # position in ``encoded``: per-item records
        batches.append(batch)
    return batches


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one batch: ``input_ids``, ``attention_mask`` (0/1), ``labels`` (-100 at pads)."""
    width = max(len(e.input_ids) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def padding_fraction(batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """Fraction of batch positions that are padding (0.0 for no batches)."""
    total = pad = 0
    for batch in batches:
        mask = batch["attention_mask"]
        total += mask.numel()
        pad += int((mask == 0).sum())
    return pad / total if total else 0.0
