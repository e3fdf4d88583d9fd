"""LoRA through peft (rsLoRA and DoRA are peft flags): its torch side and the PEFT format.

peft's ``inject_adapter_in_model`` puts LoRA layers into the plain model
without a PeftModel wrapper, so LoRA composes with our own adapter, prefix and
prompt components on one model; peft's bitsandbytes dispatch makes it QLoRA
when the base is 4-bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ablate.components import gate as gating
from ablate.components._arch import Dims, decoder_layers, layer_linear_names
from ablate.components.base import Attached, trainable_fp32
from ablate.components.lora import LoraConfig
from ablate.errors import ConfigError

ADAPTER_NAME = "ablate"
GATE_NAME = "lora_gate"  # ModuleDict on each LoRA layer, keyed by ADAPTER_NAME like lora_A/lora_B


def expected_params(dims: Dims, cfg: LoraConfig) -> int:
    """r*(d_in+d_out) per target matrix (+ d_out magnitudes with DoRA, + d_in+1 with a gate), per layer."""
    per_layer = 0
    for name in cfg.target_names():
        d_in, d_out = dims.linear(name)
        per_layer += cfg.r * (d_in + d_out) + (d_out if cfg.dora else 0)
        per_layer += gating.params(d_in) if cfg.gate else 0
    return dims.layers * per_layer


def peft_config(cfg: LoraConfig, **extra: Any) -> Any:
    """The same LoRA as a ``peft.LoraConfig`` (attachment here, and PEFT directories on export)."""
    import peft

    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_names()),
        use_rslora=cfg.rslora,
        use_dora=cfg.dora,
        bias="none",
        **extra,
    )


def peft_state(model: nn.Module) -> dict[str, Any]:
    """ablate's LoRA weights under the names a saved ``PeftModel`` uses (``base_model.model.`` +
    the module path, adapter name dropped; DoRA magnitudes included), as peft itself computes them."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def save_peft(directory: str, cfg: LoraConfig, state: Mapping[str, Any], base_model: str) -> None:
    """A PEFT adapter directory (``adapter_config.json``, ``adapter_model.safetensors``) that
    ``PeftModel.from_pretrained`` and lm-eval's ``peft=`` load without ablate."""
    from safetensors.torch import save_file

    peft_config(cfg, task_type="CAUSAL_LM", base_model_name_or_path=base_model).save_pretrained(directory)
    save_file(dict(state), f"{directory}/adapter_model.safetensors", metadata={"format": "pt"})


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def apply(model: nn.Module, cfg: LoraConfig) -> Attached:
    import peft

    available = layer_linear_names(model)
    for target in cfg.target_names():
        if target not in available:
            raise ConfigError(
                "peft.lora.targets",
                target,
                f"unknown target module (this model has {', '.join(available)})",
            )
    if _lora_layers(model):
        raise RuntimeError("LoRA is already attached; detach it first")
    peft_cfg = peft_config(cfg)
    # peft marks every non-LoRA parameter frozen; our base is frozen already.
    peft.inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER_NAME)
    gates, handles = _attach_gates(model) if cfg.gate else ([], [])

    def set_enabled(enabled: bool) -> None:
        for _, layer in _lora_layers(model):
            layer.enable_adapters(enabled)

    def detach() -> None:
        for h in handles:
            h.remove()
        # Swap each LoRA wrapper back for the base layer it wraps (its gate goes with it).
        for name, layer in _lora_layers(model):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
        if hasattr(model, "peft_config"):  # set by inject_adapter_in_model
            del model.peft_config

    return Attached(
        "lora",
        cfg,
        model,
        owns=lambda n: f".{ADAPTER_NAME}." in n and "lora_" in n,
        set_enabled=set_enabled,
        detach=detach,
        gates=(lambda: gates) if cfg.gate else None,
    )


def _attach_gates(model: nn.Module) -> tuple[list[tuple[int, gating.Gate]], list]:
    """A gate on every LoRA layer: a pre-hook computes g from the layer's input x, a hook on lora_B
    scales the update B(A(x)) by it, and the layer's own hook drops g after the forward (peft calls
    lora_B only while the adapter is enabled, so knockout switches the gate off with it)."""
    from peft.tuners.lora import LoraLayer

    gates, handles = [], []
    for index, block in enumerate(decoder_layers(model)):
        for _, layer in block.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            gate = trainable_fp32(gating.Gate(layer.in_features), layer)
            setattr(layer, GATE_NAME, nn.ModuleDict({ADAPTER_NAME: gate}))
            held: dict[str, object] = {}

            def pre(module, args, kwargs, gate=gate, held=held):
                x = args[0] if args else kwargs["x"]
                held["g"] = None if module.disable_adapters else gate(x)

            def post(module, args, kwargs, output, held=held):
                held.pop("g", None)  # never keep the graph alive between steps

            def scale(module, args, output, held=held):
                g = held.get("g")
                return output if g is None else output * g.to(output.dtype)

            handles += [
                layer.register_forward_pre_hook(pre, with_kwargs=True),
                layer.register_forward_hook(post, with_kwargs=True),
                layer.lora_B[ADAPTER_NAME].register_forward_hook(scale),
            ]
            gates.append((index, gate))
    return gates, handles


def rank_for_params(dims: Dims, fields: Mapping[str, Any], target: int) -> tuple[int, int]:
    """The rank whose closed-form count is nearest ``target`` for these LoRA fields (targets,
    DoRA...): ``(rank, params at that rank)``. Counts are affine in r (DoRA's magnitudes do not
    grow with it), so two ranks give the line and the nearest integer rank is read off it."""
    count = {r: expected_params(dims, LoraConfig.from_dict({**fields, "r": r})) for r in (1, 2)}
    per_rank = count[2] - count[1]
    fixed = count[1] - per_rank
    rank = max(1, round((target - fixed) / per_rank))
    return rank, rank * per_rank + fixed
