"""Where things live inside a decoder-only transformers model.

Components attach by structure (decoder layers with ``self_attn`` and ``mlp``),
not by model class, so Llama, Qwen2, Mistral and SmolLM2 all work the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Dims:
    """The few sizes every closed-form parameter count needs."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    context: int

    @property
    def d_kv(self) -> int:
        return self.kv_heads * self.head_dim

    def linear(self, name: str) -> tuple[int, int]:
        """(d_in, d_out) of a projection in one decoder layer."""
        h, q, kv, ff = self.hidden, self.heads * self.head_dim, self.d_kv, self.intermediate
        table = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, ff),
            "up_proj": (h, ff),
            "down_proj": (ff, h),
        }
        return table[name]


def dims(config) -> Dims:
    """Sizes read from a transformers config (the closed forms' only input)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return Dims(
        hidden=cfg.hidden_size,
        layers=cfg.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=cfg.intermediate_size,
        context=cfg.max_position_embeddings,
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks (each has ``self_attn`` and ``mlp``)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            first = module[0]
            if hasattr(first, "self_attn") and hasattr(first, "mlp"):
                return module
    raise TypeError(f"{type(model).__name__} has no decoder layers with self_attn and mlp")


def layer_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear projections inside one decoder layer."""
    names = []
    for name, module in decoder_layers(model)[0].named_modules():
        if isinstance(module, nn.Linear) and "." in name:
            names.append(name.rsplit(".", 1)[1])
    return names
