"""(IA)³ (Liu et al. 2022): learned vectors that rescale the keys, the values and the feed-forward
intermediate activations, element-wise, initialised to ones so the model starts unchanged.

Its fields; the torch side (hooks on the projections) is ``layers.py``. A fixed size,
L·(2·d_kv + d_ff) parameters, so capacity levels leave it alone (``capacity = None``).
"""

from __future__ import annotations

from typing import ClassVar

from ablate.components.registry import ComponentConfig, register
from ablate.fields import field


@register
class Ia3Config(ComponentConfig):
    name = "ia3"
    order: ClassVar[int] = 40
    test_lr: ClassVar[float] = 3e-2
    ffn: bool = field(True, "rescale the FFN intermediate too (+ d_ff per layer); false: keys, values")
    lr: float = field(1e-2, "learning rate of the vectors (they start at 1: larger steps than LoRA)", gt=0)
