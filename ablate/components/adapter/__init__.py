"""Bottleneck adapters, serial (Houlsby 2019, Pfeiffer 2020) or parallel (He et al. 2022): fields.

The torch side is ``layers.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from ablate.components.registry import ComponentConfig, register
from ablate.fields import field

PLACEMENTS = {"houlsby": ("attn", "ffn"), "pfeiffer": ("ffn",), "attn": ("attn",), "ffn": ("ffn",)}


@register
class AdapterConfig(ComponentConfig):
    name = "adapter"
    order: ClassVar[int] = 10
    capacity: ClassVar[str | None] = "width"
    test_lr: ClassVar[float] = 1e-2
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

    @classmethod
    def scale_capacity(cls, fields: Mapping[str, Any], k: float) -> dict[str, Any]:
        """The width, and the width ratio when one is set (MAM: the width is the model's)."""
        out = super().scale_capacity(fields, k)
        if fields.get("width_ratio"):
            out["width_ratio"] = float(fields["width_ratio"]) * k
        return out
