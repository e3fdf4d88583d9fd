"""Prefix tuning (Li & Liang 2021): trainable per-layer key/value prefixes.

Written here rather than through peft because peft's prefix tuning lives in a
PeftModel wrapper that feeds prefixes as a past-key-value cache: it shifts
positions and cannot share the model with our own adapters. Instead we
register an attention function with transformers' ``AttentionInterface`` that
concatenates the prefix to the keys/values the (possibly LoRA-adapted)
``k_proj``/``v_proj`` just produced, after RoPE, so prefix and LoRA really
interact. Grouped-query attention is handled by storing prefixes at the
key/value head count; the attention mask gains P always-visible columns.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ablate.components import gate as gating
from ablate.components._arch import Dims, decoder_layers, dims
from ablate.components.base import Attached, trainable_fp32
from ablate.components.prefix import PrefixConfig

MODULE_NAME = "ablate_prefix"
_PREFIX_IMPL = "ablate_prefix_"  # registered as ablate_prefix_<original implementation>


class PrefixEncoder(nn.Module):
    """Produces (layers, 2, kv_heads, P, head_dim) key/value prefixes."""

    def __init__(self, d: Dims, cfg: PrefixConfig) -> None:
        super().__init__()
        self.shape = (d.layers, 2, d.kv_heads, cfg.length, d.head_dim)
        if cfg.reparam:
            self.embedding = nn.Parameter(torch.randn(cfg.length, d.hidden) * cfg.init_std)
            self.mlp = nn.Sequential(
                nn.Linear(d.hidden, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 2 * d.layers * d.d_kv)
            )
        else:
            self.kv = nn.Parameter(torch.randn(self.shape) * cfg.init_std)
        if cfg.gate:
            self.gates = nn.ModuleList(gating.Gate(d.hidden) for _ in range(d.layers))
        self.current: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        if hasattr(self, "kv"):
            return self.kv
        layers, _, kv_heads, length, head_dim = self.shape
        out = self.mlp(self.embedding)  # (P, 2*L*d_kv)
        return out.view(length, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)


def expected_params(d: Dims, cfg: PrefixConfig) -> int:
    gates = d.layers * gating.params(d.hidden) if cfg.gate else 0
    if not cfg.reparam:
        return 2 * d.layers * cfg.length * d.d_kv + gates
    out = 2 * d.layers * d.d_kv
    return cfg.length * d.hidden + d.hidden * cfg.hidden + cfg.hidden + cfg.hidden * out + out + gates


def _inner_attention(module: nn.Module, name: str):
    """The attention function the prefix wraps: a registered one (sdpa), or for eager the model's own
    ``eager_attention_forward``, which transformers keeps in each model's module, not the registry."""
    if name != "eager":
        return ALL_ATTENTION_FUNCTIONS[name]
    return sys.modules[type(module).__module__].eager_attention_forward


def _prefix_attention(inner_name: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        inner = _inner_attention(module, inner_name)
        gate = module.__dict__.pop("_ablate_prefix_gate", None)  # (batch, q_len, 1): the gate's pre-hook
        encoder = getattr(module, "_ablate_prefix", None)
        if encoder is None or encoder.current is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        prefix = encoder.current[module.layer_idx].to(key.dtype)  # (2, kv_heads, P, head_dim)
        batch, _, q_len, _ = query.shape
        p_len = prefix.shape[2]
        pk = prefix[0].unsqueeze(0).expand(batch, -1, -1, -1)
        pv = prefix[1].unsqueeze(0).expand(batch, -1, -1, -1)
        head_dim = value.shape[-1]
        key = torch.cat([pk, key], dim=2)
        if gate is None:
            value = torch.cat([pv, value], dim=2)
        else:
            # Values [pv | 0] and [0 | v] side by side: one attention call returns the prefix's share
            # P and the tokens' share X of every query's output, and the gate scales P alone.
            value = torch.cat(
                [torch.cat([pv, torch.zeros_like(pv)], -1), torch.cat([torch.zeros_like(value), value], -1)],
                dim=2,
            )
        if attention_mask is None:  # sdpa skipped the mask: plain causal over the real keys
            k_len = key.shape[2] - p_len
            causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
            attention_mask = causal[None, None]
        else:
            attention_mask = attention_mask[..., -(key.shape[2] - p_len) :]
        visible = True if attention_mask.dtype == torch.bool else 0.0
        pad = torch.full(
            (*attention_mask.shape[:-1], p_len), visible, dtype=attention_mask.dtype, device=query.device
        )
        attention_mask = torch.cat([pad, attention_mask], dim=-1)
        if inner_name == "eager" and attention_mask.dtype == torch.bool:  # eager adds its mask to the scores
            hidden = torch.finfo(query.dtype).min
            attention_mask = torch.zeros(
                attention_mask.shape, dtype=query.dtype, device=query.device
            ).masked_fill(~attention_mask, hidden)
        kwargs["is_causal"] = False
        out, weights = inner(module, query, key, value, attention_mask, **kwargs)
        if gate is not None:  # out: (batch, q_len, heads, 2 * head_dim)
            out = gate.to(out.dtype).unsqueeze(-1) * out[..., :head_dim] + out[..., head_dim:]
        return out, weights

    return attention


for _impl in ("sdpa", "eager"):
    AttentionInterface.register(_PREFIX_IMPL + _impl, _prefix_attention(_impl))
    AttentionMaskInterface.register(_PREFIX_IMPL + _impl, ALL_MASK_ATTENTION_FUNCTIONS[_impl])


def apply(model: nn.Module, cfg: PrefixConfig) -> Attached:
    if hasattr(model, MODULE_NAME):
        raise RuntimeError("a prefix is already attached; detach it first")
    config = model.config
    original = config._attn_implementation or "eager"
    if original not in ("sdpa", "eager"):
        raise RuntimeError(f"prefix tuning supports sdpa/eager attention, not {original}")
    encoder = trainable_fp32(PrefixEncoder(dims(config), cfg), model)
    setattr(model, MODULE_NAME, encoder)
    attns = [layer.self_attn for layer in decoder_layers(model)]
    for attn in attns:
        # A plain attribute, not a submodule: the encoder is registered once, on the model.
        object.__setattr__(attn, "_ablate_prefix", encoder)
    config._attn_implementation = _PREFIX_IMPL + original
    state = {"enabled": True}

    def pre_hook(module, args, kwargs):
        # Run the (possibly MLP-reparameterised) encoder once per forward, not once per layer.
        encoder.current = encoder() if state["enabled"] else None

    def post_hook(module, args, kwargs, output):
        encoder.current = None  # do not keep the graph alive between steps
        return output

    handles = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True),
    ]
    if cfg.gate:
        handles += [
            attn.register_forward_pre_hook(_gate_hook(encoder.gates[i], state), with_kwargs=True)
            for i, attn in enumerate(attns)
        ]

    def detach() -> None:
        for h in handles:
            h.remove()
        for attn in attns:
            object.__delattr__(attn, "_ablate_prefix")
            attn.__dict__.pop("_ablate_prefix_gate", None)
        config._attn_implementation = original
        delattr(model, MODULE_NAME)

    return Attached(
        "prefix",
        cfg,
        model,
        owns=lambda n: n.startswith(MODULE_NAME + "."),
        set_enabled=lambda on: state.update(enabled=on),
        detach=detach,
        gates=(lambda: list(enumerate(encoder.gates))) if cfg.gate else None,
    )


def _gate_hook(gate: gating.Gate, state: dict):
    """Before a layer's attention: its gate per token, from the attention input (read once by the
    attention function, which clears it)."""

    def pre_hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        object.__setattr__(module, "_ablate_prefix_gate", gate(x) if state["enabled"] else None)

    return pre_hook
