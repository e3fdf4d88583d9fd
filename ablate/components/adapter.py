"""Bottleneck adapters, serial (Houlsby 2019, Pfeiffer 2020) or parallel (He et al. 2022).

Written here because peft has no bottleneck adapters and AdapterHub's
``adapters`` does not support transformers 5. Adapters attach through forward
hooks on each decoder layer's ``self_attn`` / ``mlp``, so they see the output
of (possibly LoRA-adapted, possibly 4-bit) sublayers without replacing any
module of the base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ablate.components._arch import Dims, decoder_layers, dims
from ablate.components.base import Attached, ComponentConfig, trainable_fp32

PLACEMENTS = {"houlsby": ("attn", "ffn"), "pfeiffer": ("ffn",), "attn": ("attn",), "ffn": ("ffn",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
MODULE_NAME = "ablate_adapter"


@dataclass
class AdapterConfig(ComponentConfig):
    name = "adapter"
    width: int = 16  # bottleneck width w: 2*h*w + w + h params per site
    placement: str = "houlsby"  # houlsby = after attention and FFN; pfeiffer = after FFN only
    mode: str = "serial"  # serial: f(out); parallel: f(sublayer input), added to out
    activation: str = "relu"
    scaling: float = 1.0  # multiplies the adapter output (He et al. use 4 for parallel)
    dropout: float = 0.0
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.positive("width")
        self.positive("scaling")
        self.one_of("placement", tuple(PLACEMENTS))
        self.one_of("mode", ("serial", "parallel"))
        self.one_of("activation", tuple(ACTIVATIONS))


class Bottleneck(nn.Module):
    """down (h->w) -> activation -> up (w->h); up starts at zero so the model is unchanged."""

    def __init__(self, hidden: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, cfg.width)
        self.act = ACTIVATIONS[cfg.activation]()
        self.drop = nn.Dropout(cfg.dropout)
        self.up = nn.Linear(cfg.width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = cfg.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.down.weight.dtype)
        return (self.up(self.drop(self.act(self.down(x)))) * self.scaling).to(dtype)


def expected_params(d: Dims, cfg: AdapterConfig) -> int:
    return d.layers * len(PLACEMENTS[cfg.placement]) * (2 * d.hidden * cfg.width + cfg.width + d.hidden)


def apply(model: nn.Module, cfg: AdapterConfig) -> Attached:
    hidden = dims(model.config).hidden
    state = {"enabled": True}
    handles = []
    layers = decoder_layers(model)
    for layer in layers:
        if hasattr(layer, MODULE_NAME):
            raise RuntimeError("adapters are already attached; detach them first")
        sites = nn.ModuleDict({s: Bottleneck(hidden, cfg) for s in PLACEMENTS[cfg.placement]})
        setattr(layer, MODULE_NAME, trainable_fp32(sites, layer))
        for site, sub in (("attn", layer.self_attn), ("ffn", layer.mlp)):
            if site in sites:
                handles.append(
                    sub.register_forward_hook(_hook(sites[site], cfg.mode, state), with_kwargs=True)
                )

    def detach() -> None:
        for h in handles:
            h.remove()
        for layer in layers:
            delattr(layer, MODULE_NAME)

    return Attached(
        "adapter",
        cfg,
        model,
        owns=lambda n: f".{MODULE_NAME}." in n,
        set_enabled=lambda on: state.update(enabled=on),
        detach=detach,
    )


def _hook(adapter: Bottleneck, mode: str, state: dict):
    def hook(module, args, kwargs, output):
        if not state["enabled"]:
            return output
        out = output[0] if isinstance(output, tuple) else output
        if mode == "serial":
            new = out + adapter(out)
        else:
            x = args[0] if args else kwargs["hidden_states"]
            new = out + adapter(x)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
