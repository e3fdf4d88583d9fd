"""Device facts, decided in one place: which device, whether it does bf16 natively, and the
autocast a trial runs under. A leaf: it imports torch and nothing of ablate, so the base
loader, quantisation and the training loop all read the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
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
