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
from typing import Any, overload

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
        self.digest: str | None = None  # of the ids and labels, set by the first run that records it


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
) -> Batches:
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
    return Batches(encoded, chunks, pad_id)


class Batches(Sequence[dict[str, torch.Tensor]]):
    """An epoch's batches, each collated when first read and then kept: a search trial of 12
    steps reads 12 of an epoch's 64 batches, and collating all of them up front was a tenth of
    such a trial on the tiny model (benchmarks: study overhead)."""

    def __init__(self, encoded: Sequence[Encoded], chunks: list[list[int]], pad_id: int) -> None:
        self._encoded, self._chunks, self._pad_id = encoded, chunks, pad_id
        self._built: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._chunks)

    @overload
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, torch.Tensor]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices; IndexError past the end
        if i not in self._built:
            chunk = self._chunks[i]
            batch = collate([self._encoded[j] for j in chunk], self._pad_id)
            # each example's position in ``encoded``: per-item records
            batch["index"] = torch.tensor(chunk, dtype=torch.long)
            self._built[i] = batch
        return self._built[i]

    def padding_fraction(self) -> float:
        """Fraction of batch positions that are padding, from the lengths alone (nothing collated)."""
        total = real = 0
        for chunk in self._chunks:
            lengths = [len(self._encoded[j].input_ids) for j in chunk]
            total += max(lengths) * len(lengths)
            real += sum(lengths)
        return (total - real) / total if total else 0.0


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one batch: ``input_ids``, ``attention_mask`` (0/1), ``labels`` (-100 at pads)."""
    lengths = torch.tensor([len(e.input_ids) for e in items], dtype=torch.long)
    # one tensor per field from the concatenated rows, scattered under the mask: a Python loop of
    # per-row tensors cost more than the tiny model's training step
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    input_ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    labels = torch.full(mask.shape, IGNORE_INDEX, dtype=torch.long)
    input_ids[mask] = torch.tensor([t for e in items for t in e.input_ids], dtype=torch.long)
    labels[mask] = torch.tensor([t for e in items for t in e.labels], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask.long(), "labels": labels}


def padding_fraction(batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """Fraction of batch positions that are padding (0.0 for no batches)."""
    total = pad = 0
    for batch in batches:
        mask = batch["attention_mask"]
        total += mask.numel()
        pad += int((mask == 0).sum())
    return pad / total if total else 0.0
