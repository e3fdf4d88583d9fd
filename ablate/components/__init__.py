"""PEFT components: one folder each (``ablate/components/<name>/``), found here, listed nowhere else.

Importing this package imports every sub-folder, whose ``@register`` adds its config class to
the registry (``registry.py`` says what a component is). Nothing here imports torch: the CLI
and the schema read the components' fields without it. Attaching them to a model is
``ablate.components.stack``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ablate.components.registry import (
    CONFIGS,
    ComponentConfig,
    arm_name,
    base_name,
    build_configs,
    parse_arm,
    register,
)

for _found in pkgutil.iter_modules(__path__):
    if _found.ispkg:
        importlib.import_module(f"{__name__}.{_found.name}")

#: every component, in canonical order (it spells arm names and is the order they attach in)
COMPONENTS: tuple[str, ...] = tuple(CONFIGS)
#: the method every combination is built on and compared with (``base = True`` in its config)
BASE: str = base_name()

__all__ = [
    "BASE",
    "COMPONENTS",
    "CONFIGS",
    "ComponentConfig",
    "arm_name",
    "build_configs",
    "parse_arm",
    "register",
]
