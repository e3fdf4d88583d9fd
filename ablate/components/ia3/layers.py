"""(IA)³ on torch: per layer, a vector l_k and l_v rescaling what ``k_proj`` and ``v_proj`` produce,
and l_ff rescaling the input of ``down_proj`` (the FFN's intermediate activations).

Written here rather than through peft: peft's IA3 is its own tuner that replaces ``k_proj``,
``v_proj`` and ``down_proj`` with IA3 layers, and peft does not stack a second tuner type on
modules that LoRA has already wrapped (its mixed models accept only the LoRA family). Forward
hooks on the (possibly LoRA-wrapped, possibly 4-bit) projections rescale their whole output, LoRA's
update included, without replacing any module of the base; LoRA attaches first (canonical order),
so the hooks sit on its wrappers and leave with the vectors when (IA)³ detaches.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.components._arch import Dims, decoder_layers, dims
from ablate.components.base import Attached, layer_hooked, trainable_fp32
from ablate.components.ia3 import Ia3Config

MODULE_NAME = "ablate_ia3"


class Scales(nn.Module):
    """One layer's vectors, all ones: x * 1 is x exactly, so the model starts bit-identical."""

    def __init__(self, d: Dims, ffn: bool) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.ones(d.d_kv))
        self.v = nn.Parameter(torch.ones(d.d_kv))
        self.ff = nn.Parameter(torch.ones(d.intermediate)) if ffn else None


def expected_params(d: Dims, cfg: Ia3Config) -> int:
    return d.layers * (2 * d.d_kv + (d.intermediate if cfg.ffn else 0))


def apply(model: nn.Module, cfg: Ia3Config) -> Attached:
    d = dims(model.config)
    state = {"enabled": True}
    handles = []
    layers = decoder_layers(model)
    for layer in layers:
        if hasattr(layer, MODULE_NAME):
            raise RuntimeError("(IA)³ is already attached; detach it first")
        scales = trainable_fp32(Scales(d, cfg.ffn), layer)
        setattr(layer, MODULE_NAME, scales)
        handles.append(layer.self_attn.k_proj.register_forward_hook(_rescale_output(scales.k, state)))
        handles.append(layer.self_attn.v_proj.register_forward_hook(_rescale_output(scales.v, state)))
        if scales.ff is not None:
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(_rescale_input(scales.ff, state)))

    return layer_hooked("ia3", cfg, model, layers, MODULE_NAME, handles, state)


def _rescale_output(scale: nn.Parameter, state: dict):
    def hook(module, args, output):
        return output * scale.to(output.dtype) if state["enabled"] else output

    return hook


def _rescale_input(scale: nn.Parameter, state: dict):
    def pre_hook(module, args):
        if not state["enabled"]:
            return None
        x, *rest = args
        return (x * scale.to(x.dtype), *rest)

    return pre_hook
