"""Prefix tuning (Li & Liang 2021): trainable per-layer key/value prefixes: its fields.

The torch side (an attention function that prepends the prefixes) is ``layers.py``.
"""

from __future__ import annotations

from typing import ClassVar

from ablate.components.registry import ComponentConfig, register
from ablate.fields import field


@register
class PrefixConfig(ComponentConfig):
    name = "prefix"
    order: ClassVar[int] = 20
    capacity: ClassVar[str | None] = "length"
    uses_context: ClassVar[bool] = True
    unchanged_at_init: ClassVar[bool] = False
    test_lr: ClassVar[float] = 3e-2
    length: int = field(16, "P virtual key/value positions per layer: 2*L*P*d_kv params", gt=0)
    reparam: bool = field(False, "MLP reparameterisation (Li & Liang): stabler, more params while training")
    hidden: int = field(128, "MLP hidden width when reparam is on", gt=0)
    init_std: float = field(0.02, "small prefixes barely perturb attention at the start", gt=0)
    gate: bool = field(False, "UniPELT gate per layer on the prefix's attention share, + h + 1 params")
    lr: float = field(1e-2, "learning rate of the prefixes", gt=0)
