"""4-bit / 8-bit base through bitsandbytes, applied when the base is loaded (``ablate.models``).

Quantisation is a property of the loaded base, not a component attached per trial: a worker
quantises its base once and every trial's components attach on top of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ablate.device import native_bf16
from ablate.schema import QuantConfig

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(cfg: QuantConfig, device: torch.device) -> torch.dtype:
    """The dtype a quantised base computes in: ``quant.compute_dtype``, or bf16 where native."""
    chosen = DTYPES[cfg.compute_dtype]
    if chosen is not None:
        return chosen
    return torch.bfloat16 if native_bf16(device) else torch.float32


def bnb_config(cfg: QuantConfig, device: torch.device) -> Any:
    """The transformers ``BitsAndBytesConfig`` for this method (None when unquantised)."""
    if not cfg.enabled:
        return None
    from transformers import BitsAndBytesConfig

    if cfg.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.method,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(cfg, device),
    )


def prepare(model: torch.nn.Module, cfg: QuantConfig) -> torch.nn.Module:
    """Freeze the base; for a k-bit base in fp32 also apply peft's k-bit training preparation.

    peft's ``prepare_model_for_kbit_training`` casts every non-quantised weight (embeddings,
    norms, the lm_head) to fp32, for stability when those weights are trained. Here the base is
    always frozen and the trainable components keep fp32 weights of their own, so a base whose
    compute dtype is bf16 keeps its non-quantised weights in bf16: on SmolLM2 the tied 28M-entry
    embedding alone is 113 MB in fp32 against 57 MB in bf16 (benchmarks/run.py, QLoRA memory).
    Nothing else of that function applies: no gradient checkpointing here.
    """
    if cfg.enabled:
        # bitsandbytes' CPU gemv_4bit op warns that it has no autograd kernel; the
        # MatMul4Bit autograd.Function around it does the backward, and
        # tests/test_components.py checks input gradients against the dequantised weight.
        warnings.filterwarnings("ignore", message=r"bitsandbytes::gemv_4bit: an autograd kernel")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes repacks 4-bit weights into a CPU-kernel layout on the first
            # no-grad forward and back again on state_dict(); with double quantisation the
            # way back re-quantises the scales, so the frozen base would drift. Keep one layout.
            module.support_avx512bf16_for_cpu = False
    low_precision = {p.dtype for p in model.parameters() if p.__class__.__name__ != "Params4bit"} <= {
        torch.bfloat16,
        torch.float16,
    }
    if cfg.enabled and not low_precision:
        from peft import prepare_model_for_kbit_training

        # No gradient checkpointing: our sequences are short and it slows CPU steps ~30%.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model
