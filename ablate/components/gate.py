"""Learned gates (UniPELT, Mao et al. 2022): ``g = sigmoid(W_g x + b_g)`` per layer per component.

Gating is a field of the components that support it (``peft.lora.gate``,
``peft.adapter.gate``, ``peft.prefix.gate``), not a component of its own: a gate
scales one component's contribution, so it belongs to that component. Its
parameters are that component's parameters (same optimizer group, saved and
loaded with it, switched off with it by knockout), which is why gating costs no
change to the training loop, and its closed form lives in the component's module
(``d + 1`` per gate, ``d`` the width of the input it reads).

Each gate reads the input of the sublayer it gates, one value per token, so a
decoder stays causal (UniPELT's encoder gates average over the sequence, which
would let a token see the ones after it). ``W_g`` and ``b_g`` start at zero: every
gate starts at exactly 0.5, and how far the trained mean moves from 0.5 says
which method the model leaned on. Components whose output is zero at
initialisation (LoRA, adapters) stay unchanged at initialisation with a gate.

In evaluation mode (``model.eval()``) a gate accumulates the sum and count of the
values it produced, over every position of the evaluated batches (padding
included); ``means`` reads them and ``reset`` clears them, so a trial can record
the mean gate of its final evaluation per layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class Gate(nn.Module):
    """``sigmoid(W x + b)`` with ``W: d -> 1``; returns ``(..., 1)`` in the input's dtype."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.total = 0.0
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.proj(x.to(self.proj.weight.dtype)))
        if not self.training:
            self.total += float(g.detach().sum())
            self.count += g.numel()
        return g.to(x.dtype)

    def reset(self) -> None:
        self.total, self.count = 0.0, 0


def params(d: int) -> int:
    """Closed form of one gate reading a ``d``-wide input."""
    return d + 1


def layer_means(gates: Iterable[tuple[int, Gate]]) -> dict[int, float]:
    """Mean gate value per layer over what the gates saw in evaluation (layers with several gates,
    e.g. LoRA's target matrices, pool their values); layers whose gates saw nothing are left out."""
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for layer, gate in gates:
        total[layer] = total.get(layer, 0.0) + gate.total
        count[layer] = count.get(layer, 0) + gate.count
    return {layer: total[layer] / count[layer] for layer in sorted(total) if count[layer]}
