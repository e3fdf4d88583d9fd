"""LoRA (Hu et al. 2021) through peft, with rsLoRA, DoRA and a UniPELT gate: its fields.

The base method of every study: the baseline arm, the one every other component is combined
with, the parameter-matched arm and the interference measurement are LoRA (``base = True``).
Its torch side, and the PEFT format it exports to, is ``layers.py``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from ablate.components.registry import ComponentConfig, register
from ablate.errors import require
from ablate.fields import field

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGET_SETS = {"attention": ATTENTION, "mlp": MLP, "all-linear": ATTENTION + MLP}


@register
class LoraConfig(ComponentConfig):
    name = "lora"
    order: ClassVar[int] = 0
    base: ClassVar[bool] = True
    capacity: ClassVar[str | None] = "r"
    test_lr: ClassVar[float] = 1e-2
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
