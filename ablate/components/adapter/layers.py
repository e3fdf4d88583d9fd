"""Bottleneck adapters, serial (Houlsby 2019, Pfeiffer 2020) or parallel (He et al. 2022).

Written here because peft has no bottleneck adapters and AdapterHub's
``adapters`` does not support transformers 5. Adapters attach through forward
hooks on each decoder layer's ``self_attn`` / ``mlp``, so they see the output
of (possibly LoRA-adapted, possibly 4-bit) sublayers without replacing any
module of the base.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.components import gate as gating
from ablate.components._arch import Dims, decoder_layers, dims
from ablate.components.adapter import PLACEMENTS, AdapterConfig
from ablate.components.base import Attached, layer_hooked, trainable_fp32

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
MODULE_NAME = "ablate_adapter"


class Bottleneck(nn.Module):
    """down (h->w) -> activation -> up (w->h); up starts at zero so the model is unchanged."""

    def __init__(self, hidden: int, cfg: AdapterConfig) -> None:
        super().__init__()
        width = width_of(hidden, cfg)
        self.down = nn.Linear(hidden, width)
        self.act = ACTIVATIONS[cfg.activation]()
        self.drop = nn.Dropout(cfg.dropout)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = cfg.scaling
        self.gate = gating.Gate(hidden) if cfg.gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.down.weight.dtype)
        return (self.up(self.drop(self.act(self.down(x)))) * self.scaling).to(dtype)


def width_of(hidden: int, cfg: AdapterConfig) -> int:
    """The bottleneck width: ``width``, or ``width_ratio * hidden`` (at least 1) when that is set."""
    return max(1, round(cfg.width_ratio * hidden)) if cfg.width_ratio > 0 else cfg.width


def expected_params(d: Dims, cfg: AdapterConfig) -> int:
    w = width_of(d.hidden, cfg)
    per_site = 2 * d.hidden * w + w + d.hidden + (gating.params(d.hidden) if cfg.gate else 0)
    return d.layers * len(PLACEMENTS[cfg.placement]) * per_site


def apply(model: nn.Module, cfg: AdapterConfig) -> Attached:
    hidden = dims(model.config).hidden
    state = {"enabled": True}
    handles = []
    layers = decoder_layers(model)
    gates = []
    for index, layer in enumerate(layers):
        if hasattr(layer, MODULE_NAME):
            raise RuntimeError("adapters are already attached; detach them first")
        sites = nn.ModuleDict({s: Bottleneck(hidden, cfg) for s in PLACEMENTS[cfg.placement]})
        setattr(layer, MODULE_NAME, trainable_fp32(sites, layer))
        gates += [(index, b.gate) for b in sites.values() if b.gate is not None]
        for site, sub in (("attn", layer.self_attn), ("ffn", layer.mlp)):
            if site in sites:
                handles.append(
                    sub.register_forward_hook(_hook(sites[site], cfg.mode, state), with_kwargs=True)
                )

    return layer_hooked(
        "adapter", cfg, model, layers, MODULE_NAME, handles, state, (lambda: gates) if cfg.gate else None
    )


def _hook(adapter: Bottleneck, mode: str, state: dict):
    def hook(module, args, kwargs, output):
        if not state["enabled"]:
            return output
        out = output[0] if isinstance(output, tuple) else output
        x = args[0] if args else kwargs["hidden_states"]  # the sublayer's input
        delta = adapter(out if mode == "serial" else x)
        if adapter.gate is not None:  # UniPELT: the gate reads the sublayer's input in both modes
            delta = delta * adapter.gate(x)
        new = out + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
