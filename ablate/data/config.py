"""The one record type every data source produces, beside the data config (``ablate.schema``).

``DataConfig`` (validated by the schema, without torch) is the only place that judges a user's
data settings, so every later stage can trust them; each mistake is a ``ConfigError`` keyed by
its dotted config path (``data.path``, ``data.n_train``...).
"""

from __future__ import annotations

from dataclasses import dataclass

from ablate.schema.config import FORMATS, SPLITS, DataConfig
from ablate.schema.tasks import BUILTIN_TASKS, SOURCES

__all__ = ["BUILTIN_TASKS", "FORMATS", "SOURCES", "SPLITS", "DataConfig", "Example"]


@dataclass(frozen=True)
class Example:
    """One prompt/response pair; exact match on ``response`` is the task metric."""

    prompt: str
    response: str
