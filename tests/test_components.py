"""One table of cases over every component alone, every pair and all together x {no quant, nf4},
driving shared checks.

The components come from the registry (each one's learning rate here is its ``test_lr``, its
gate is its ``gate`` field); adding one costs a row in ``CLOSED_FORMS`` (its closed form lives
in its ``layers.py``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file

from ablate.components import CONFIGS, arm_name, build_configs
from ablate.components import stack as components
from ablate.components.stack import attach, expected_params
from ablate.data.tasks import generate_splits
from ablate.data.tokenize import encode, make_batches
from ablate.metrics import evaluate, forward_logits
from ablate.schema import TrainConfig
from ablate.train import train
from tests.conftest import load_tiny

NAMES = tuple(CONFIGS)
# alone, with any other one, and all together (every subset of 5 would be 31 arms x 2 quants)
ARMS = [c for k in (1, 2) for c in itertools.combinations(NAMES, k)] + [NAMES]
GATED = tuple(n for n in NAMES if "gate" in CONFIGS[n].model_fields)  # UniPELT: peft.<name>.gate
GATED_ARMS = [GATED, NAMES]
CASES = [pytest.param(arm, q, False, id=f"{arm_name(arm)}-{q}") for arm in ARMS for q in ("none", "nf4")]
CASES += [
    pytest.param(arm, q, True, id=f"{arm_name(arm)}-gated-{q}") for arm in GATED_ARMS for q in ("none", "nf4")
]
LR = {n: c.test_lr for n, c in CONFIGS.items()}


def gates_on(arm):
    return {n: {"gate": True} for n in arm if n in GATED}


def cfgs_for(arm, **overrides):
    fields = {n: {"lr": LR[n], **overrides.get(n, {})} for n in arm}
    for n in arm:  # deterministic steps: the loss must go down on one fixed batch
        if "dropout" in CONFIGS[n].model_fields:
            fields[n].setdefault("dropout", 0.0)
    return build_configs(arm, fields)


@pytest.fixture(scope="module")
def batch(tiny_bases):
    tok = tiny_bases["none"].tokenizer
    examples = generate_splits("arithmetic", 8, 1, 1, seed=0)["train"]
    enc = encode(examples, tok, max_length=200)
    return make_batches(enc, 8, shuffle=False, seed=0, pad_id=tok.pad_token_id)[0]


def base_snapshot(model):
    """Every base tensor in canonical layout (bitsandbytes repacks 4-bit weights for CPU kernels
    on the first inference forward; ``state_dict`` unpacks them), including the 4-bit quant state."""
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def logits(model, batch):
    with torch.no_grad():
        return forward_logits(model, batch)[0]


def train_steps(base, stack, batch, steps):
    cfg = TrainConfig(steps=steps, batch_size=8, warmup_ratio=0.0, eval_every=10**6, progress=False)
    return train(base.model, stack, lambda epoch: [batch], cfg, base.device)


@pytest.mark.parametrize("arm,quant,gated", CASES)
def test_component_contract(arm, quant, gated, tiny_bases, batch, tmp_path):
    base = tiny_bases[quant]
    model = base.model
    before = base_snapshot(model)
    cfgs = cfgs_for(arm, **(gates_on(arm) if gated else {}))
    stack = attach(model, cfgs, max_length=200)
    try:
        # 1. trainable parameters equal the closed forms, component by component
        assert stack.num_parameters() == expected_params(model.config, cfgs)
        own = {n for a in stack for n, _ in a.named_parameters()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == own

        # 2. gradients reach every component parameter and nothing else
        logits_, targets = forward_logits(model, batch)
        torch.nn.functional.cross_entropy(
            logits_.flatten(0, 1), targets.flatten(), ignore_index=-100
        ).backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == own
        model.zero_grad(set_to_none=True)

        # 3. a few optimizer steps lower the loss on a fixed batch; the base stays bit-identical
        loss0 = evaluate(model, [batch], base.device)["loss"]
        train_steps(base, stack, batch, steps=8)
        loss1 = evaluate(model, [batch], base.device)["loss"]
        assert loss1 < loss0 - 1e-3, (loss0, loss1)

        # 4. knockout: switching a component off gives exactly the model without it
        trained_logits = logits(model, batch)
        state = stack.state_dict()
        if len(arm) > 1:
            other = load_tiny(quant)
            for name in arm:
                with stack.knocked_out([name]):
                    ko = logits(model, batch)
                rest = tuple(n for n in arm if n != name)
                ref_stack = attach(other.model, {n: cfgs[n] for n in rest}, max_length=200)
                ref_stack.load_state_dict({n: state[n] for n in rest})
                assert torch.equal(ko, logits(other.model, batch)), f"knockout of {name}"
                ref_stack.detach()
                assert torch.equal(logits(model, batch), trained_logits), f"re-enabling {name}"

        # 5. save and load only the components: same eval loss on a fresh base
        components.save(stack, tmp_path)
        fresh = load_tiny(quant)
        loaded = components.load(fresh.model, tmp_path, max_length=200)
        assert loaded.names == stack.names
        assert evaluate(fresh.model, [batch], fresh.device)["loss"] == pytest.approx(loss1, abs=1e-6)
        keys = {k.split("/", 1)[1] for k in load_file(str(tmp_path / "components.safetensors"))}
        assert keys == own
    finally:
        stack.detach()
    # 6. after training and detaching, every base tensor is bit-identical and nothing leaks
    after = base_snapshot(model)
    assert set(after) == set(before)
    for n, t in after.items():
        assert torch.equal(t, before[n]), n
    assert not any(p.requires_grad for p in model.parameters())


UNCHANGED = tuple(n for n in NAMES if CONFIGS[n].unchanged_at_init)


@pytest.mark.parametrize("arm", [(n,) for n in UNCHANGED] + [UNCHANGED], ids=arm_name)
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"lora": {"dora": True, "rslora": True, "targets": "all-linear"}, "adapter": {"mode": "parallel"}},
        {"lora": {"gate": True, "targets": "all-linear"}, "adapter": {"gate": True, "mode": "parallel"}},
        {"lora": {"gate": True}, "adapter": {"gate": True, "placement": "ffn", "width_ratio": 0.5}},
    ],
    ids=["default", "dora-rslora-parallel", "gated-parallel", "gated-serial-ratio"],
)
def test_outputs_unchanged_at_init(arm, variant, tiny_bases, batch):
    model = tiny_bases["none"].model
    reference = logits(model, batch)
    stack = attach(model, cfgs_for(arm, **{k: v for k, v in variant.items() if k in arm}))
    try:
        assert torch.equal(logits(model, batch), reference)
    finally:
        stack.detach()


# One row per case: a component, its fields, and (where given) its count worked out by hand on the
# tiny config (h=64, L=2, 4 heads, 2 kv heads: d_kv=32, intermediate ff=128). Every component needs
# at least one row with a hand count (test_every_component_has_a_hand_count).
CLOSED_FORMS = [
    ("lora", {"r": 8, "targets": ["q_proj", "v_proj"]}, 2 * (8 * (64 + 64) + 8 * (64 + 32))),
    ("lora", {"r": 4, "targets": "all-linear", "dora": True}, None),
    ("lora", {"r": 2, "targets": ["q_proj", "down_proj"]}, None),
    ("lora", {"r": 2, "targets": ["q_proj", "down_proj"], "gate": True}, None),
    ("adapter", {"width": 16}, 2 * 2 * (2 * 64 * 16 + 16 + 64)),
    ("adapter", {"width": 8, "placement": "pfeiffer"}, None),
    ("adapter", {"width": 4, "placement": "attn", "mode": "parallel"}, None),
    ("adapter", {"width": 8, "placement": "pfeiffer", "gate": True}, None),
    ("adapter", {"width_ratio": 0.3, "placement": "houlsby", "mode": "parallel"}, None),
    ("prefix", {"length": 4}, 2 * 2 * 4 * 32),
    ("prefix", {"length": 5, "reparam": True, "hidden": 32}, None),
    ("prefix", {"length": 5, "reparam": True, "hidden": 32, "gate": True}, None),
    ("prefix", {"length": 5, "gate": True}, None),
    ("prompt", {"length": 3}, 3 * 64),
    ("prompt", {"length": 7, "init": "random"}, None),
    ("ia3", {}, 2 * (2 * 32 + 128)),
]


@pytest.mark.parametrize("name,fields,by_hand", CLOSED_FORMS)
def test_closed_forms(name, fields, by_hand, tiny_bases):
    """The attached parameters equal the closed form (and the hand count, where the row gives one)."""
    model = tiny_bases["none"].model
    cfgs = build_configs((name,), {name: fields})
    stack = attach(model, cfgs)
    try:
        assert stack.num_parameters() == expected_params(model.config, cfgs)
    finally:
        stack.detach()
    if by_hand is not None:
        assert expected_params(model.config, cfgs)[name] == by_hand


def test_every_component_has_a_hand_count():
    assert {name for name, _, by_hand in CLOSED_FORMS if by_hand is not None} == set(NAMES)


def test_gate_and_width_ratio_closed_forms_by_hand(tiny_bases):
    """A gate reads a d-wide input: d + 1 params (one per target matrix, adapter site or layer);
    width_ratio scales the bottleneck to the model (0.5 * h = 32 on tiny)."""
    config = tiny_bases["none"].model.config
    gated = {
        "lora": {"r": 8, "targets": ["q_proj", "down_proj"]},
        "adapter": {"width": 16},
        "prefix": {"length": 4},
    }
    plain = expected_params(config, build_configs(GATED, gated))
    got = expected_params(config, build_configs(GATED, {n: {**f, "gate": True} for n, f in gated.items()}))
    assert got["lora"] - plain["lora"] == 2 * ((64 + 1) + (128 + 1))  # q_proj reads h=64, down_proj ff=128
    assert got["adapter"] - plain["adapter"] == 2 * 2 * (64 + 1)  # Houlsby: two sites per layer
    assert got["prefix"] - plain["prefix"] == 2 * (64 + 1)  # one gate per layer
    mam = build_configs(("adapter",), {"adapter": {"width_ratio": 0.5, "placement": "ffn", "width": 3}})
    assert expected_params(config, mam)["adapter"] == 2 * (2 * 64 * 32 + 32 + 64)


def test_prefix_respects_padding_and_gqa(tiny_bases):
    """A right-padded sequence gets the same logits as the same sequence alone."""
    base = tiny_bases["none"]
    stack = attach(base.model, cfgs_for(("prefix", "prompt")))
    try:
        ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
        with torch.no_grad():
            both = base.model(input_ids=ids, attention_mask=mask).logits
            alone = base.model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
        assert both.shape[1] == 6
        torch.testing.assert_close(both[1, :3], alone[0], rtol=0, atol=1e-5)
    finally:
        stack.detach()


def test_nf4_input_gradients_match_dequantised_weights():
    """Gradients through a frozen 4-bit layer equal those through its dequantised weight.

    bitsandbytes warns its CPU gemv has no autograd kernel, and its CPU repacking (done on
    the first no-grad forward) drops the input gradient entirely; ``quant.prepare`` turns
    that repacking off, so an evaluation between training steps cannot break QLoRA.
    """
    import bitsandbytes as bnb

    from ablate.quant import prepare
    from ablate.schema import QuantConfig

    torch.manual_seed(0)
    weight = torch.randn(128, 64)
    layer = bnb.nn.Linear4bit(64, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    layer = prepare(torch.nn.Sequential(layer.to("cpu")), QuantConfig())[0]
    dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))  # may repack the weight for CPU kernels: gradients must survive that
    layer.train()
    for shape in [(1, 64), (2, 5, 64)]:
        x = torch.randn(*shape, requires_grad=True)
        g = torch.randn(*shape[:-1], 128)
        (layer(x) * g).sum().backward()
        x2 = x.detach().clone().requires_grad_(True)
        ((x2 @ dense.t()) * g).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
