"""What every component is to the rest of ablate, and the one place components are listed.

A component is one folder, ``ablate/components/<name>/``:

- ``__init__.py``: its fields, a ``ComponentConfig`` subclass marked ``@register`` (validated
  without torch, so the CLI refuses a bad value before anything heavy loads), with the class
  variables below that the study, the search and the tests read instead of lists of their own;
- ``layers.py``: its torch side, ``apply(model, cfg) -> Attached`` and the closed form
  ``expected_params(dims, cfg)`` (``ablate.components.stack`` finds it by that name);
- beside the code: ``conf/peft/<name>.yaml`` (its defaults; its defaults list pulls in its
  search space, ``conf/search/<name>.yaml``) and a row in the component test table.

``ablate.components`` imports every sub-folder when it is first imported, so this registry is
complete before any config is validated: nothing else names the components.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from ablate.errors import ConfigError, require
from ablate.fields import Schema, field

#: name -> config class, kept in canonical order (``ComponentConfig.order``)
CONFIGS: dict[str, type[ComponentConfig]] = {}
#: a component's name: its folder, its config key (``peft.<name>``) and part of arm names and paths
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ComponentConfig(Schema):
    """Fields shared by every component, and what the system needs to know about one."""

    name: ClassVar[str] = ""
    #: canonical position: it spells arm names (lora+adapter+prefix+prompt) and is the order
    #: components attach in (a later one sees the output of the earlier ones)
    order: ClassVar[int] = 0
    #: the method every other one is combined with: the study's baseline, its parameter-matched
    #: arm and its interference measurement are this component alone (exactly one sets it)
    base: ClassVar[bool] = False
    #: the field its trainable parameters grow about linearly in (capacity levels multiply it);
    #: None: a fixed size (capacity levels leave it alone)
    capacity: ClassVar[str | None] = None
    #: its ``length`` virtual positions compete with the data for the model's context
    uses_context: ClassVar[bool] = False
    #: the model's outputs are exactly the base's while it is freshly attached (zero-initialised
    #: updates, unit scales); prefixes and soft prompts add positions, so they cannot promise it
    unchanged_at_init: ClassVar[bool] = True
    #: a learning rate at which a few steps on one fixed batch lower a tiny model's loss (the
    #: component contract test trains every combination at these)
    test_lr: ClassVar[float] = 1e-2
    #: field -> the field it makes moot when set (truthy); search spaces drop the moot one
    SHADOWS: ClassVar[dict[str, str]] = {}
    lr: float = field(1e-3, "learning rate: each component is its own optimizer group, searched alone", gt=0)
    weight_decay: float = field(0.0, "AdamW weight decay of this component's parameters", ge=0)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.KEY = f"peft.{cls.name}"

    @classmethod
    def scale_capacity(cls, fields: Mapping[str, Any], k: float) -> dict[str, Any]:
        """The fields that change when this component's capacity is multiplied by ``k`` (its
        params about k x), from its current ``fields``; empty for a fixed-size component."""
        if cls.capacity is None or fields.get(cls.capacity) is None:
            return {}
        return {cls.capacity: int(fields[cls.capacity]) * k}

    def check_context(self, context: int, max_length: int) -> None:
        """Virtual positions plus the longest example must fit the model's context."""
        if not self.uses_context:
            return
        length = self.length  # type: ignore[attr-defined]
        require(
            length + max_length <= context,
            self.key("length"),
            length,
            f"{length} + data.max_length {max_length} exceeds the model context of {context} tokens",
        )


def register(cls: type[ComponentConfig]) -> type[ComponentConfig]:
    """``@register`` on a component's config class: the one line that makes it part of ablate."""
    if not NAME.match(cls.name):
        raise TypeError(f"{cls.__name__}: name {cls.name!r} must be lower-case letters, digits and _")
    for other in CONFIGS.values():
        if other.name == cls.name or other.order == cls.order:
            raise TypeError(
                f"{cls.__name__}: name {cls.name!r} or order {cls.order} already taken by {other.__name__}"
            )
        if other.base and cls.base:
            raise TypeError(f"{cls.__name__}: {other.name} is already the base method")
    entries = sorted([*CONFIGS.values(), cls], key=lambda c: c.order)
    CONFIGS.clear()
    CONFIGS.update((c.name, c) for c in entries)
    return cls


def base_name() -> str:
    """The base method's name (``lora``): what ``base = True`` in its config class says."""
    return next(n for n, c in CONFIGS.items() if c.base)


def parse_arm(spec: str | list[str] | tuple[str, ...], key: str = "peft") -> tuple[str, ...]:
    """``lora+adapter`` or ``[adapter, lora]`` -> ('lora', 'adapter') in canonical order."""
    names = spec.split("+") if isinstance(spec, str) else [str(s) for s in spec]
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(key, spec, "select at least one component")
    for n in names:
        if n not in CONFIGS:
            raise ConfigError(key, n, f"unknown component (known: {', '.join(CONFIGS)})")
    if len(set(names)) != len(names):
        raise ConfigError(key, spec, "a component is listed twice")
    return tuple(n for n in CONFIGS if n in names)


def arm_name(names: tuple[str, ...] | list[str]) -> str:
    return "+".join(n for n in CONFIGS if n in names)


def build_configs(names: tuple[str, ...], fields: Mapping[str, Any]) -> dict[str, ComponentConfig]:
    """Typed, validated configs for the selected components (fields: ``peft.<name>`` dicts)."""
    return {n: CONFIGS[n].from_dict(fields.get(n)) for n in names}
