"""4-bit / 8-bit base through bitsandbytes, applied when the base is loaded.

Unlike the other components, quantisation is a property of the loaded base,
not something attached per trial: a worker quantises its base once and every
trial's components attach on top of it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ablate.errors import ConfigError, require

METHODS = ("none", "nf4", "fp4", "int8")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class QuantConfig:
    method: str = "none"
    double_quant: bool = True  # QLoRA's nested quantisation of the scales: ~0.4 bit/param saved
    compute_dtype: str = "auto"  # auto: bfloat16 where the device does bf16 natively (GPUs, AVX512_BF16/AMX)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QuantConfig:
        data = dict(data or {})
        unknown = set(data) - {"method", "double_quant", "compute_dtype"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"quant.{key}", data[key], "unknown field")
        cfg = cls(**data)
        require(cfg.method in METHODS, "quant.method", cfg.method, f"must be one of {', '.join(METHODS)}")
        require(
            isinstance(cfg.double_quant, bool),
            "quant.double_quant",
            cfg.double_quant,
            "must be true or false",
        )
        require(
            cfg.compute_dtype in DTYPES,
            "quant.compute_dtype",
            cfg.compute_dtype,
            f"must be one of {', '.join(DTYPES)}",
        )
        return cfg

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def torch_compute_dtype(self, device: torch.device) -> torch.dtype:
        chosen = DTYPES[self.compute_dtype]
        if chosen is not None:
            return chosen
        return torch.bfloat16 if native_bf16(device) else torch.float32

    def bnb_config(self, device: torch.device):
        """The transformers ``BitsAndBytesConfig`` for this method (None when unquantised)."""
        if not self.enabled:
            return None
        from transformers import BitsAndBytesConfig

        if self.method == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.method,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.torch_compute_dtype(device),
        )


def native_bf16(device: torch.device) -> bool:
    """Does this device do bf16 arithmetic natively: a GPU with bf16, or a CPU with AVX512-BF16/AMX?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from ablate.train import native_bf16_cpu  # deferred: ablate.train imports the components

    return device.type == "cpu" and native_bf16_cpu()


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
