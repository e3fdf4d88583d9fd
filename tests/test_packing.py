"""Packing search trials (benchmarks/packing.py): K LoRA trials in one batch over one frozen base
must train exactly as each would alone. Numbers on the tiny model, fp32, seconds."""

from __future__ import annotations

import pytest
import torch

from ablate.data.tokenize import encode
from ablate.metrics import forward_logits, token_loss_sum
from benchmarks.packing import (
    PackedLoraLinear,
    attach_packed,
    batch_stream,
    detach_packed,
    equivalence,
    pack,
    trials_for,
)
from benchmarks.throughput import longtail_examples

BATCH = 4


@pytest.fixture(scope="module")
def base(tiny_bases):
    return tiny_bases["none"]


@pytest.fixture(scope="module")
def examples(base):
    return encode(longtail_examples(48, base.tokenizer, seed=0), base.tokenizer, max_length=512)


def packed_batch(base, examples, trials):
    pad_id = base.tokenizer.pad_token_id
    batches = [next(batch_stream(examples, BATCH, t.seed, pad_id)) for t in trials]
    return batches, pack(batches, pad_id)


def test_each_packed_trial_trains_as_if_alone(base, examples):
    trials = trials_for(2)  # different seeds, data orders, learning rates and weight decays
    kw = dict(steps=4, batch_size=BATCH, pad_id=base.tokenizer.pad_token_id)
    eq = equivalence(base.model, trials, examples, **kw)
    assert len(eq["loss_diff_by_step"]) == 4
    assert eq["max_loss_diff"] < 1e-5 and eq["max_param_diff"] < 1e-5, eq
    # Not vacuous: the trials' first batches have different widths (the pack pads one of them).
    batches, _ = packed_batch(base, examples, trials)
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]


def test_packed_model_equals_the_base_at_init(base, examples):
    batches, batch = packed_batch(base, examples, trials_for(2))
    before = {n: t.clone() for n, t in base.model.state_dict().items()}
    with torch.no_grad():
        want = forward_logits(base.model, batch)[0]
        layers = attach_packed(base.model, 2)
        try:
            got = forward_logits(base.model, batch)[0]
        finally:
            detach_packed(base.model)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    assert torch.equal(got, want)  # B = 0: exactly the base
    assert not any(isinstance(m, PackedLoraLinear) for m in base.model.modules())
    after = base.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_a_trials_loss_reaches_only_its_own_factors(base, examples):
    batches, batch = packed_batch(base, examples, trials_for(2))
    layers = attach_packed(base.model, 2)
    try:
        with torch.no_grad():  # B != 0, so A gets a gradient too
            for layer in layers:
                for b in layer.B:
                    b.normal_(std=0.02)
        logits, targets = forward_logits(base.model, batch)
        token_loss_sum(logits[:BATCH], targets[:BATCH]).backward()  # trial 0's rows only
        mine = [p for layer in layers for p in layer.trial_params(0)]
        other = [p for layer in layers for p in layer.trial_params(1)]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mine)
        assert all(p.grad is None or not p.grad.any() for p in other)
        assert all(p.grad is None for p in base.model.parameters() if not p.requires_grad)  # frozen base
    finally:
        detach_packed(base.model)
