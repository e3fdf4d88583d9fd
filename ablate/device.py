"""Device facts, decided in one place: which device, whether it does bf16 natively, and the
autocast a trial runs under. A leaf: it imports torch and nothing of ablate, so the base
loader, quantisation and the training loop all read the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch


def pick() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16_cpu() -> bool:
    """Does this CPU do bf16 arithmetic natively (AVX512-BF16 or AMX)? There, bf16 autocast is
    faster than fp32; elsewhere it is emulated and slower, so ``auto`` stays fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check, so no bf16 by default
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def native_bf16(device: torch.device) -> bool:
    """Does this device do bf16 arithmetic natively: a GPU with bf16, or a CPU with AVX512-BF16/AMX?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and native_bf16_cpu()


def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    """bf16 autocast for ``bf16``, and for ``auto`` where bf16 is native (checked against fp32 on
    the tiny model in tests/test_precision.py; the trainable component weights and the optimizer
    state stay fp32 either way)."""
    if not (precision == "bf16" or (precision == "auto" and native_bf16(device))):
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


#: ``model.attn_implementation=auto``: the widest batch (tokens) that runs eager attention on the CPU.
#: Measured with ``python -m benchmarks run --only attention`` (a LoRA step, batch 8, fp32 on a 2-core
#: AVX2 CPU, 2026-12-07): eager / sdpa step time 0.86 at 43 tokens and 0.99 at 128 with padded
#: batches (sdpa's CPU flash kernel with a mask), 1.05 at 256 and 1.14 at 512, where eager's
#: (batch, heads, T, T) weights also cost memory. GPUs keep sdpa (flash or memory-efficient kernels).
EAGER_MAX_TOKENS = 128
#: the attribute ``load_base`` sets on a model loaded with ``attn_implementation=auto``
AUTO_ATTENTION = "_ablate_auto_attention"


def attention_kernel(device: torch.device, width: int) -> str:
    """The attention kernel for a batch ``width`` tokens wide on ``device`` (``auto``)."""
    return "eager" if device.type == "cpu" and width <= EAGER_MAX_TOKENS else "sdpa"


@contextmanager
def attention_for(model: Any, width: int, device: torch.device) -> Iterator[None]:
    """Run the block with the kernel ``auto`` picks for this batch, when the model was loaded with
    ``auto``; then put the model's own back. transformers reads ``config._attn_implementation`` at
    every forward (attention and mask alike), so switching it between batches is all it takes; a
    name with a prefix (prefix tuning's wrapper, ``ablate_prefix_sdpa``) keeps the prefix."""
    config = model.config
    before = config._attn_implementation
    if not getattr(model, AUTO_ATTENTION, False) or not before.endswith(("sdpa", "eager")):
        yield
        return
    stem = before.removesuffix("sdpa").removesuffix("eager")
    config._attn_implementation = stem + attention_kernel(device, width)
    try:
        yield
    finally:
        config._attn_implementation = before
