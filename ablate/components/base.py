"""The component contract.

A component is its fields (its folder's ``__init__.py``, validated without torch;
``registry.py``) plus ``apply(model, cfg)`` in its ``layers.py``, which attaches it to a
frozen (possibly 4-bit) base and returns an ``Attached`` handle. The handle names the
component's trainable parameters, switches it off and on (knockout), saves and loads only
its own weights and detaches it cleanly, so one loaded base serves many trials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ablate.components.registry import ComponentConfig


class Attached:
    """Handle of one component attached to one model.

    ``owns(name)`` decides which of the model's named parameters belong to the
    component; everything else (the knockout switch, detaching) is supplied by
    the component module through small callables.
    """

    def __init__(
        self,
        name: str,
        cfg: ComponentConfig,
        model: nn.Module,
        owns: Callable[[str], bool],
        set_enabled: Callable[[bool], None],
        detach: Callable[[], None],
        gates: Callable[[], Iterable[tuple[int, Any]]] | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.model = model
        self._owns = owns
        self._set_enabled = set_enabled
        self._detach = detach
        self._gates = gates  # (layer index, Gate) pairs when the component is gated
        self.enabled = True

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for pname, param in self.model.named_parameters():
            if self._owns(pname):
                yield pname, param

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_enabled(self, enabled: bool) -> None:
        self._set_enabled(enabled)
        self.enabled = enabled

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing = set(own) - set(state)
        unexpected = set(state) - set(own)
        if missing or unexpected:
            raise KeyError(f"{self.name}: missing {sorted(missing)} unexpected {sorted(unexpected)}")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(state[n].to(device=p.device, dtype=p.dtype))

    def detach(self) -> None:
        self._detach()

    def gate_means(self) -> dict[int, float]:
        """Mean gate value per layer over the evaluations since ``reset_gates`` (empty: ungated)."""
        from ablate.components.gate import layer_means

        return layer_means(self._gates()) if self._gates else {}

    def reset_gates(self) -> None:
        for _, gate in self._gates() if self._gates else ():
            gate.reset()


def trainable_fp32(module: nn.Module, like: nn.Module) -> nn.Module:
    """Component weights live in fp32 on the base's device, whatever the base dtype.

    A 4-bit or bf16 base computes in low precision, but the small trainable
    tensors keep full precision so AdamW updates are not lost to rounding.
    """
    device = next(like.parameters()).device
    return module.to(device=device, dtype=torch.float32)


def layer_hooked(
    name: str, cfg: ComponentConfig, model: nn.Module, layers: Iterable[nn.Module], module_name: str,
    handles: list[Any], state: dict[str, bool], gates: Callable[[], Iterable[tuple[int, Any]]] | None = None,
) -> Attached:  # fmt: skip
    """The handle of a component that hangs one module named ``module_name`` on each decoder layer
    and acts through forward hooks (``handles``) that read ``state["enabled"]`` (adapters, (IA)³):
    it owns those modules' parameters, and detaching removes the hooks and the modules."""
    layers = list(layers)

    def detach() -> None:
        for h in handles:
            h.remove()
        for layer in layers:
            delattr(layer, module_name)

    return Attached(
        name, cfg, model, owns=lambda n: f".{module_name}." in n,
        set_enabled=lambda on: state.update(enabled=on), detach=detach, gates=gates,
    )  # fmt: skip
