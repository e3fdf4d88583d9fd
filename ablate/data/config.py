"""The data config and the one record type every data source produces.

``DataConfig.from_dict`` is the only place that judges a user's data settings,
so every later stage can trust them; each mistake is a ``ConfigError`` keyed by
its dotted config path (``data.path``, ``data.n_train``...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from ablate.errors import ConfigError, require

#: Generated tasks shipped with ablate (kept in sync with ``tasks.TASKS`` by a test).
BUILTIN_TASKS = ("dates", "arithmetic", "json_extract")
#: Every accepted ``data.name``: a built-in task, user files, or a Hugging Face dataset.
SOURCES = (*BUILTIN_TASKS, "file", "hf")
#: File formats, inferred from the extension when ``data.format`` is null.
FORMATS = ("jsonl", "csv", "parquet")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One prompt/response pair; exact match on ``response`` is the task metric."""

    prompt: str
    response: str


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how many; validated by ``from_dict``."""

    name: str = "dates"
    path: str | None = None
    validation_path: str | None = None
    test_path: str | None = None
    format: str | None = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    hf_name: str | None = None
    hf_config: str | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    n_train: int | None = 2000
    n_validation: int | None = 100
    n_test: int | None = 200
    seed: int = 0
    max_length: int = 128
    #: keyword options of a built-in task, e.g. ``{"digits": [1, 2]}`` for arithmetic (``tasks.OPTIONS``);
    #: left out of the hash so the config stays hashable (equality still compares it)
    task_options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def is_builtin(self) -> bool:
        return self.name in BUILTIN_TASKS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Build and validate a config from a plain or OmegaConf mapping."""
        known = {f.name for f in fields(cls)}
        for key in d:
            require(key in known, f"data.{key}", d[key], f"unknown key; known: {sorted(known)}")
        v = {**{f.name: _default(f) for f in fields(cls)}, **dict(d)}

        name = v["name"]
        require(name in SOURCES, "data.name", name, f"must be one of {list(SOURCES)}")
        for key in ("path", "validation_path", "test_path"):
            v[key] = _opt_path(key, v[key])
        for key in ("hf_name", "hf_config", "format"):
            v[key] = _opt_str(key, v[key])
        for key in ("prompt_field", "response_field"):
            val = v[key]
            require(isinstance(val, str) and val != "", f"data.{key}", val, "must be a column name")
        if v["format"] in ("auto", "json"):  # "json" means JSON lines here, as in pandas
            v["format"] = None if v["format"] == "auto" else "jsonl"
        fmt = v["format"]
        require(fmt is None or fmt in FORMATS, "data.format", fmt, f"must be one of {FORMATS}")
        for key in ("n_train", "n_validation", "n_test"):
            val = v[key]
            if val is None:
                require(name not in BUILTIN_TASKS, f"data.{key}", val, f"task {name} needs a count")
            else:
                require(_is_int(val) and val > 0, f"data.{key}", val, "must be an integer > 0")
        require(_is_int(v["seed"]), "data.seed", v["seed"], "must be an integer")
        ml = v["max_length"]
        require(_is_int(ml) and ml > 0, "data.max_length", ml, "must be an integer > 0")
        raw_fractions = v["split_fractions"]
        v["split_fractions"] = _fractions(raw_fractions)
        # Imported here: tasks.py imports Example from this module.
        from ablate.data.tasks import parse_options

        v["task_options"] = parse_options(name, v["task_options"])

        # Settings that only one source reads are a mistake elsewhere (e.g. a
        # data.path override while data=dates is still selected).
        only = {"path": "file", "validation_path": "file", "test_path": "file", "format": "file"}
        only |= {"hf_name": "hf", "hf_config": "hf"}
        for key, source in only.items():
            if v[key] is not None and name != source:
                raise ConfigError(f"data.{key}", v[key], f"only read with data={source}")
        if name == "file":
            require(v["path"] is not None, "data.path", None, "data=file needs a file path")
        if name == "hf":
            require(v["hf_name"] is not None, "data.hf_name", None, "data=hf needs a dataset id")
        for i, split in enumerate(SPLITS[1:], start=1):
            # hf datasets often carry their own splits; checked at load time.
            if name == "file" and v[f"{split}_path"] is None:
                reason = f"{split} fraction must be > 0 when data.{split}_path is not given"
                require(v["split_fractions"][i] > 0, "data.split_fractions", list(raw_fractions), reason)
        return cls(**v)


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _opt_str(key: str, x: Any) -> str | None:
    require(x is None or (isinstance(x, str) and x != ""), f"data.{key}", x, "must be a string")
    return x


def _opt_path(key: str, x: Any) -> str | None:
    if isinstance(x, os.PathLike):
        x = os.fspath(x)
    return _opt_str(key, x)


def _fractions(x: Any) -> tuple[float, float, float]:
    key = "data.split_fractions"
    ok = isinstance(x, Sequence) and not isinstance(x, str) and len(x) == 3
    require(ok, key, x, "must be three numbers: train, validation, test")
    vals = list(x)
    nums = all(isinstance(f, int | float) and not isinstance(f, bool) for f in vals)
    require(nums and all(f >= 0 for f in vals), key, vals, "must be numbers >= 0")
    require(vals[0] > 0, key, vals, "train fraction must be > 0")
    require(math.isclose(sum(vals), 1.0, abs_tol=1e-6), key, vals, "must sum to 1")
    return (float(vals[0]), float(vals[1]), float(vals[2]))
