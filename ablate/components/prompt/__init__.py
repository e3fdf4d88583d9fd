"""Prompt tuning (Lester et al. 2021): N trainable virtual tokens before the input: its fields.

The torch side (hooks that prepend the soft prompt) is ``layers.py``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ablate.components.registry import ComponentConfig, register
from ablate.fields import field


@register
class PromptConfig(ComponentConfig):
    name = "prompt"
    order: ClassVar[int] = 30
    capacity: ClassVar[str | None] = "length"
    uses_context: ClassVar[bool] = True
    unchanged_at_init: ClassVar[bool] = False
    test_lr: ClassVar[float] = 3e-2
    length: int = field(16, "N virtual tokens: N*h params, N more positions per sequence", gt=0)
    init: Literal["vocab", "random"] = field("vocab", "vocab: copies of random real token embeddings")
    init_std: float = field(0.02, "standard deviation for init=random", gt=0)
    lr: float = field(1e-2, "learning rate of the soft prompt", gt=0)
