"""The component contract.

A component is a typed config that validates itself plus ``apply(model, cfg)``
which attaches it to a frozen (possibly 4-bit) base and returns an
``Attached`` handle. The handle names the component's trainable parameters,
switches it off and on (knockout), saves and loads only its own weights and
detaches it cleanly, so one loaded base serves many trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ablate.errors import ConfigError, require


@dataclass
class ComponentConfig:
    """Fields shared by every component; subclasses add their own."""

    name: ClassVar[str] = ""
    #: field -> the field it makes moot when set (truthy); search spaces drop the moot one
    SHADOWS: ClassVar[dict[str, str]] = {}
    lr: float = 1e-3  # each component is its own optimizer group, so its lr is searched alone
    weight_decay: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ComponentConfig:
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"peft.{cls.name}.{key}", data[key], f"unknown field (known: {', '.join(known)})"
                )
        values = {}
        for key, value in data.items():
            default = known[key].default
            values[key] = _coerce(f"peft.{cls.name}.{key}", value, default)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.positive("lr")
        require(self.weight_decay >= 0, self.key("weight_decay"), self.weight_decay, "must be >= 0")

    # helpers for subclasses -------------------------------------------------
    def key(self, field: str) -> str:
        return f"peft.{self.name}.{field}"

    def positive(self, field: str) -> None:
        value = getattr(self, field)
        require(value > 0, self.key(field), value, "must be > 0")

    def one_of(self, field: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, field)
        require(value in choices, self.key(field), value, f"must be one of {', '.join(choices)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Types follow the field's default; a wrong type is the user's mistake."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "must be true or false")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "must be an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, value, "must be a number")
    if isinstance(default, str) and not isinstance(value, str):
        if key.endswith(".targets") and isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        raise ConfigError(key, value, "must be a string")
    return value


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


def check_context(cfg: ComponentConfig, context: int, max_length: int) -> None:
    """Prefix/prompt tokens plus the longest example must fit the model context."""
    length = cfg.length  # type: ignore[attr-defined]
    require(
        length + max_length <= context,
        cfg.key("length"),
        length,
        f"{length} + data.max_length {max_length} exceeds the model context of {context} tokens",
    )
