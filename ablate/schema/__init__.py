"""One schema for the whole config: every group and field, its type, range or choices, and its help.

``ablate/fields.py`` holds the machinery (pydantic, and why), each component's folder its own
fields (``ablate.components``), ``schema/config.py`` every other group. Nothing here imports
torch or transformers, so ``ablate`` refuses a bad value before anything heavy is loaded,
and ``ablate report`` reads recorded configs without the training stack.
"""

from __future__ import annotations

from ablate.fields import Schema, describe, field, unknown_reason
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
from ablate.schema.tasks import BUILTIN_TASKS, SOURCES

__all__ = [
    "BUILTIN_TASKS",
    "DTYPE_NAMES",
    "FORMATS",
    "MAX_WORKERS",
    "OBJECTIVES",
    "PRUNERS",
    "QUANT_METHODS",
    "SAMPLERS",
    "SOURCES",
    "SPLITS",
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
    "describe",
    "field",
    "unknown_reason",
]
