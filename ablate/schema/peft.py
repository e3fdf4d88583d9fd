"""The components' fields, and the one component list (``COMPONENTS``, in registry order).

Each component's module (``ablate/components/<name>.py``) implements it on torch; its
fields live here, beside the others, so that a config is validated without importing
torch. Adding a component: its module, its ``conf/peft/<name>.yaml``, its class below
with a line in ``CONFIGS``, and its row in the test tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from ablate.errors import ConfigError, require
from ablate.schema.base import Schema, field

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGET_SETS = {"attention": ATTENTION, "mlp": MLP, "all-linear": ATTENTION + MLP}
PLACEMENTS = {"houlsby": ("attn", "ffn"), "pfeiffer": ("ffn",), "attn": ("attn",), "ffn": ("ffn",)}
CONTEXT_USERS = ("prefix", "prompt")  # components whose length competes with the data for context


class ComponentConfig(Schema):
    """Fields shared by every component; subclasses add their own."""

    name: ClassVar[str] = ""
    #: field -> the field it makes moot when set (truthy); search spaces drop the moot one
    SHADOWS: ClassVar[dict[str, str]] = {}
    lr: float = field(1e-3, "learning rate: each component is its own optimizer group, searched alone", gt=0)
    weight_decay: float = field(0.0, "AdamW weight decay of this component's parameters", ge=0)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.KEY = f"peft.{cls.name}"


class LoraConfig(ComponentConfig):
    name = "lora"
    r: int = field(8, "rank; higher adds capacity and r*(d_in+d_out) params per matrix", gt=0)
    alpha: float = field(16.0, "update scale alpha/r (alpha/sqrt(r) with rslora)", gt=0)
    dropout: float = field(0.05, "dropout on LoRA's input", ge=0, lt=1)
    targets: str | list[str] = field(
        "attention",
        "attention | mlp | all-linear | [q_proj, v_proj, ...]",
        reason=f"must be one of {', '.join(TARGET_SETS)} or a list of module names",
    )
    rslora: bool = field(False, "rank-stabilised scaling (Kalajdzievski 2023)")
    dora: bool = field(False, "weight-decomposed LoRA (Liu et al. 2024): + d_out magnitudes per matrix")
    gate: bool = field(False, "UniPELT gate per target matrix: update * sigmoid(W x + b), + d_in + 1 params")
    lr: float = field(2e-4, "learning rate of LoRA's parameters", gt=0)

    @model_validator(mode="after")
    def _rules(self) -> LoraConfig:
        if isinstance(self.targets, str):
            reason = f"must be one of {', '.join(TARGET_SETS)} or a list of module names"
            require(self.targets in TARGET_SETS, self.key("targets"), self.targets, reason)
        else:
            require(len(self.targets) > 0, self.key("targets"), self.targets, "empty target list")
        # DoRA's update goes through peft's variant path, which reads lora_B's weight, not its output
        require(not (self.gate and self.dora), self.key("gate"), self.gate, "cannot be combined with dora")
        return self

    def target_names(self) -> tuple[str, ...]:
        return TARGET_SETS[self.targets] if isinstance(self.targets, str) else tuple(self.targets)


class AdapterConfig(ComponentConfig):
    name = "adapter"
    SHADOWS: ClassVar[dict[str, str]] = {"width_ratio": "width"}
    width: int = field(16, "bottleneck width w: 2*h*w + w + h params per site", gt=0)
    width_ratio: float = field(
        0.0, "> 0: w = round(width_ratio * h) instead of width (MAM: 0.5)", ge=0,
        reason="must be >= 0 (0: use width)",
    )  # fmt: skip
    placement: Literal["houlsby", "pfeiffer", "attn", "ffn"] = field(
        "houlsby", "houlsby = after attention and FFN; pfeiffer = after FFN only"
    )
    mode: Literal["serial", "parallel"] = field(
        "serial", "serial: f(out); parallel: f(sublayer input), added to out"
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = field("relu", "the bottleneck's non-linearity")
    scaling: float = field(1.0, "multiplies the adapter output (He et al. use 4 for parallel)", gt=0)
    dropout: float = field(0.0, "dropout inside the bottleneck", ge=0, lt=1)
    gate: bool = field(False, "UniPELT gate per site: output * sigmoid(W x + b) on the sublayer input")
    lr: float = field(1e-3, "learning rate of the adapters' parameters", gt=0)


class PrefixConfig(ComponentConfig):
    name = "prefix"
    length: int = field(16, "P virtual key/value positions per layer: 2*L*P*d_kv params", gt=0)
    reparam: bool = field(False, "MLP reparameterisation (Li & Liang): stabler, more params while training")
    hidden: int = field(128, "MLP hidden width when reparam is on", gt=0)
    init_std: float = field(0.02, "small prefixes barely perturb attention at the start", gt=0)
    gate: bool = field(False, "UniPELT gate per layer on the prefix's attention share, + h + 1 params")
    lr: float = field(1e-2, "learning rate of the prefixes", gt=0)


class PromptConfig(ComponentConfig):
    name = "prompt"
    length: int = field(16, "N virtual tokens: N*h params, N more positions per sequence", gt=0)
    init: Literal["vocab", "random"] = field("vocab", "vocab: copies of random real token embeddings")
    init_std: float = field(0.02, "standard deviation for init=random", gt=0)
    lr: float = field(1e-2, "learning rate of the soft prompt", gt=0)


#: The one component list: its order spells arm names (lora+adapter+prefix+prompt) and is the
#: order components attach in. The CLI, errors, README and tests all read it from here.
CONFIGS: dict[str, type[ComponentConfig]] = {
    "lora": LoraConfig,
    "adapter": AdapterConfig,
    "prefix": PrefixConfig,
    "prompt": PromptConfig,
}
COMPONENTS = tuple(CONFIGS)


def parse_arm(spec: str | list[str] | tuple[str, ...], key: str = "peft") -> tuple[str, ...]:
    """``lora+adapter`` or ``[adapter, lora]`` -> ('lora', 'adapter') in canonical order."""
    names = spec.split("+") if isinstance(spec, str) else [str(s) for s in spec]
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(key, spec, "select at least one component")
    for n in names:
        if n not in CONFIGS:
            raise ConfigError(key, n, f"unknown component (known: {', '.join(COMPONENTS)})")
    if len(set(names)) != len(names):
        raise ConfigError(key, spec, "a component is listed twice")
    return tuple(n for n in COMPONENTS if n in names)


def arm_name(names: tuple[str, ...] | list[str]) -> str:
    return "+".join(n for n in COMPONENTS if n in names)


def build_configs(names: tuple[str, ...], fields: Mapping[str, Any]) -> dict[str, ComponentConfig]:
    """Typed, validated configs for the selected components (fields: ``peft.<name>`` dicts)."""
    return {n: CONFIGS[n].from_dict(fields.get(n)) for n in names}


def check_context(cfg: ComponentConfig, context: int, max_length: int) -> None:
    """Prefix/prompt tokens plus the longest example must fit the model context."""
    length = cfg.length  # type: ignore[attr-defined]
    require(
        length + max_length <= context,
        cfg.key("length"),
        length,
        f"{length} + data.max_length {max_length} exceeds the model context of {context} tokens",
    )
