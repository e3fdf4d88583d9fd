"""One schema for the whole config: every group and field, its type, range or choices, and its help.

``schema/base.py`` holds the machinery (pydantic, and why), ``schema/peft.py`` the components'
fields and the one component list, ``schema/config.py`` every other group. Nothing here imports
torch or transformers, so ``ablate`` refuses a bad value before anything heavy is loaded
, and ``ablate report`` reads recorded configs without the training stack.
"""

from __future__ import annotations

from ablate.schema.base import Schema, describe, field, unknown_reason
from ablate.schema.config import (
    DTYPE_NAMES,
    FORMATS,
    MAX_WORKERS,
    OBJECTIVES,
    PRUNERS,
    QUANT_METHODS,
    SAMPLERS,
    SPLITS,
    Config,
    DataConfig,
    EvalConfig,
    ExportConfig,
    FaultConfig,
    Heartbeat,
    ModelConfig,
    QuantConfig,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
    TrialConfig,
)
from ablate.schema.peft import (
    COMPONENTS,
    CONFIGS,
    CONTEXT_USERS,
    ComponentConfig,
    arm_name,
    build_configs,
    check_context,
    parse_arm,
)
from ablate.schema.tasks import BUILTIN_TASKS, SOURCES

__all__ = [
    "BUILTIN_TASKS",
    "COMPONENTS",
    "CONFIGS",
    "CONTEXT_USERS",
    "DTYPE_NAMES",
    "FORMATS",
    "MAX_WORKERS",
    "OBJECTIVES",
    "PRUNERS",
    "QUANT_METHODS",
    "SAMPLERS",
    "SOURCES",
    "SPLITS",
    "ComponentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "FaultConfig",
    "Heartbeat",
    "ModelConfig",
    "QuantConfig",
    "Schema",
    "StudyConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrialConfig",
    "arm_name",
    "build_configs",
    "check_context",
    "describe",
    "field",
    "parse_arm",
    "unknown_reason",
]
