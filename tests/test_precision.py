"""bf16 autocast (the default on CPUs with native bf16) trains like fp32, also through a 4-bit base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablate import device as device_mod
from ablate.components import build_configs
from ablate.components.stack import attach
from ablate.data.tasks import generate_splits
from ablate.data.tokenize import encode, make_batches
from ablate.device import autocast_for
from ablate.metrics import evaluate
from ablate.schema import TrainConfig
from ablate.train import train


@pytest.mark.parametrize(
    ("precision", "device", "native", "expect_bf16"),
    [
        ("auto", "cpu", True, True),
        ("auto", "cpu", False, False),
        ("fp32", "cpu", True, False),
        ("bf16", "cpu", False, True),
    ],
)
def test_auto_precision_follows_the_hardware(precision, device, native, expect_bf16, monkeypatch):
    monkeypatch.setattr(device_mod, "native_bf16_cpu", lambda: native)
    ctx = autocast_for(torch.device(device), precision)()
    with ctx:
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert (y.dtype == torch.bfloat16) == expect_bf16


def _curve(base, batches, precision: str) -> tuple[list[float], float]:
    torch.manual_seed(0)
    stack = attach(
        base.model,
        build_configs(("lora", "adapter"), {"lora": {"lr": 1e-2, "dropout": 0.0}, "adapter": {"lr": 1e-2}}),
    )
    try:
        cfg = TrainConfig(
            steps=40, batch_size=8, warmup_ratio=0.0, eval_every=20, progress=False, precision=precision
        )
        autocast = autocast_for(base.device, precision)
        result = train(
            base.model,
            stack,
            lambda epoch: batches,
            cfg,
            base.device,
            evaluate=lambda: evaluate(base.model, batches, base.device, autocast),
        )
        return [r["train_loss"] for r in result.history], result.evals[-1]["val_loss"]
    finally:
        stack.detach()


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_bf16_training_follows_fp32(quant, tiny_bases):
    """Same seed, data and steps: the bf16 loss curve tracks the fp32 one within bf16 noise."""
    base = tiny_bases[quant]
    tok = base.tokenizer
    enc = encode(generate_splits("arithmetic", 64, 1, 1, seed=0)["train"], tok, max_length=200)
    batches = make_batches(enc, 8, shuffle=False, seed=0, pad_id=tok.pad_token_id)[:1]  # memorise one batch
    fp32, fp32_val = _curve(base, batches, "fp32")
    bf16, bf16_val = _curve(base, batches, "bf16")
    for curve in (fp32, bf16):
        assert np.mean(curve[-5:]) < 0.93 * np.mean(curve[:5])  # both learn (the tiny model plateaus)
    assert np.corrcoef(fp32, bf16)[0, 1] > 0.95
    assert abs(np.mean(bf16[-5:]) - np.mean(fp32[-5:])) < 0.05 * np.mean(fp32[-5:])
    assert bf16_val == pytest.approx(fp32_val, rel=0.05)


def test_gradients_cross_a_4bit_layer_after_a_bf16_evaluation():
    """bitsandbytes' CPU repacking (on the first no-grad forward) would cut the input gradient;
    ``quant.prepare`` keeps it off, and that must hold under bf16 autocast too."""
    import bitsandbytes as bnb

    from ablate.quant import prepare
    from ablate.schema import QuantConfig

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(128, 64), requires_grad=False, quant_type="nf4")
    layer = prepare(torch.nn.Sequential(layer.to("cpu")), QuantConfig())[0]
    dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    autocast = autocast_for(torch.device("cpu"), "bf16")
    layer.eval()
    with torch.no_grad(), autocast():
        layer(torch.randn(2, 64))
    layer.train()
    x = torch.randn(3, 64, requires_grad=True)
    g = torch.randn(3, 128)
    with autocast():
        out = layer(x)
    (out.float() * g).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, g @ dense, rtol=0.05, atol=0.05 * float((g @ dense).abs().max()))


def _nf4_bytes(n: int, double_quant: bool) -> int:
    """Closed form of one NF4 weight of ``n`` entries: 2 per byte, one scale per 64-block (uint8
    with double quantisation, plus one fp32 scale per 256 blocks and one fp32 offset; else fp32)."""
    blocks = -(-n // 64)
    return n // 2 + (blocks + 4 * -(-blocks // 256) + 4 if double_quant else 4 * blocks)


#: The tiny test Llama (hidden 64, FFN 128, 4 heads of 16, 2 kv heads, 2 layers): its block linears.
TINY_LINEARS = [64 * 64, 64 * 32, 64 * 32, 64 * 64, 64 * 128, 64 * 128, 128 * 64] * 2


@pytest.mark.parametrize(
    ("quant", "compute", "dtype", "linear_bytes", "other_dtype"),
    [
        ("none", "auto", "float32", 4 * sum(TINY_LINEARS), torch.float32),
        ("none", "auto", "bfloat16", 2 * sum(TINY_LINEARS), torch.bfloat16),
        ("nf4", "bfloat16", "auto", sum(_nf4_bytes(n, True) for n in TINY_LINEARS), torch.bfloat16),
        ("nf4", "float32", "auto", sum(_nf4_bytes(n, True) for n in TINY_LINEARS), torch.float32),
    ],
)
def test_weight_bytes_match_the_closed_form(quant, compute, dtype, linear_bytes, other_dtype):
    """``weight_bytes`` counts 4-bit weights with their block scales; a 4-bit base keeps its other
    weights (embeddings, norms) in its compute dtype, bf16 included (``prepare`` must not upcast)."""
    from ablate.models import load_base, weight_bytes
    from ablate.schema import ModelConfig, QuantConfig

    cfg = ModelConfig.from_dict({"source": "tiny", "name_or_path": "tiny", "dtype": dtype})
    base = load_base(
        cfg, QuantConfig.from_dict({"method": quant, "compute_dtype": compute}), torch.device("cpu")
    )
    sizes = weight_bytes(base.model)
    linear = {
        id(p)
        for n, m in base.model.named_modules()
        if n.split(".")[-1].endswith("proj")
        for p in m.parameters()
    }
    others = [p for p in base.model.parameters() if id(p) not in linear]  # embeddings, lm_head, norms
    buffers = sum(b.numel() * b.element_size() for b in base.model.buffers())  # rotary frequencies
    assert sizes["linear"] == linear_bytes
    assert sizes["other"] == sum(p.numel() for p in others) * other_dtype.itemsize + buffers
    assert {p.dtype for p in others} == {other_dtype}


def test_a_4bit_base_with_bf16_weights_trains_like_one_with_fp32_weights():
    """Keeping the frozen embeddings and norms of a 4-bit base in bf16 (half their memory) leaves
    bf16 training where it was with fp32 copies: same curve within bf16 noise."""
    from ablate.models import load_base
    from ablate.schema import ModelConfig, QuantConfig

    curves = {}
    for compute in ("float32", "bfloat16"):
        cfg = ModelConfig.from_dict(
            {"source": "tiny", "name_or_path": "tiny", "dtype": "auto", "tiny": {"hidden_size": 64}}
        )
        base = load_base(
            cfg, QuantConfig.from_dict({"method": "nf4", "compute_dtype": compute}), torch.device("cpu")
        )
        tok = base.tokenizer
        enc = encode(generate_splits("arithmetic", 64, 1, 1, seed=0)["train"], tok, max_length=200)
        batches = make_batches(enc, 8, shuffle=False, seed=0, pad_id=tok.pad_token_id)[:1]
        curves[compute] = _curve(base, batches, "bf16")[0]
    fp32, bf16 = curves["float32"], curves["bfloat16"]
    assert np.mean(bf16[-5:]) < 0.93 * np.mean(bf16[:5])
    assert np.corrcoef(fp32, bf16)[0, 1] > 0.95
    assert abs(np.mean(bf16[-5:]) - np.mean(fp32[-5:])) < 0.05 * np.mean(fp32[-5:])


@pytest.mark.parametrize(
    ("precision", "compute", "expected"),
    [
        ("fp32", "auto", "float32"),
        ("auto", "auto", "auto"),
        ("bf16", "auto", "auto"),
        ("fp32", "bfloat16", "bfloat16"),
    ],
)
def test_an_fp32_run_gets_an_fp32_4bit_base(precision, compute, expected):
    """``quant.compute_dtype: auto`` follows the hardware (bf16 where native), unless the run asks
    for fp32 training: then the 4-bit base computes, and keeps its other weights, in fp32 too."""
    from ablate.schema import TrialConfig
    from tests.test_study import composed

    cfg = composed(
        "model=tiny", "quant=nf4", f"train.precision={precision}", f"quant.compute_dtype={compute}"
    )
    assert TrialConfig.from_dict(cfg).quant.compute_dtype == expected


@pytest.mark.parametrize("arm", ["lora", "lora+prefix"])
def test_eager_attention_gives_the_logits_sdpa_gives(tiny_bases, arm):
    """``model.attn_implementation=eager`` trains the same model: prefix tuning's wrapper finds the
    model's own eager function (transformers keeps it out of the registry), fp32 within 1e-5."""
    from ablate.metrics import forward_logits

    base = tiny_bases["none"]
    torch.manual_seed(0)
    stack = attach(base.model, build_configs(tuple(arm.split("+")), {}))
    config = base.model.config
    own = config._attn_implementation
    try:
        ids = torch.randint(3, 200, (2, 24))
        mask = torch.ones_like(ids)
        mask[1, 20:] = 0  # a padded row: eager adds the mask to the scores, sdpa reads it
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}
        out = {}
        for kernel in ("sdpa", "eager"):
            config._attn_implementation = own.replace("sdpa", kernel)
            with torch.no_grad():
                out[kernel] = forward_logits(base.model, batch)[0]
        torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-5, rtol=1e-5)
    finally:
        config._attn_implementation = own
        stack.detach()
