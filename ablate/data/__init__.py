"""Data: built-in generated tasks, user files and HF datasets -> encoded batches.

Public surface::

    splits = load_splits(DataConfig.from_dict(cfg.data))  # {"train": [...], ...}
    enc = encode(splits["train"], tokenizer, cfg.data.max_length)  # enc.dropped
    batches = make_batches(enc, 8, shuffle=True, seed=0, pad_id=tokenizer.pad_token_id)
"""

from __future__ import annotations

import importlib
from typing import Any

from ablate.data.config import SPLITS, DataConfig, Example
from ablate.data.tasks import TASKS, generate_splits

# Deferred on purpose: the schema validates ``data.task_options`` with ``ablate.data.tasks``, which
# imports this package first, and validating a config must not import torch (tokenize) or pandas
# (files). These names load their module on first use.
_LAZY = {
    "IGNORE_INDEX": "tokenize",
    "Encoded": "tokenize",
    "EncodedList": "tokenize",
    "encode": "tokenize",
    "make_batches": "tokenize",
    "padding_fraction": "tokenize",
    "load_file_splits": "files",
    "load_hf_splits": "files",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ablate.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ablate.data' has no attribute {name!r}")


__all__ = [
    "IGNORE_INDEX",
    "SPLITS",
    "TASKS",
    "DataConfig",
    "Encoded",
    "EncodedList",
    "Example",
    "encode",
    "load_splits",
    "make_batches",
    "padding_fraction",
]


def load_splits(cfg: DataConfig) -> dict[str, list[Example]]:
    """The ``train``, ``validation`` and ``test`` examples that ``cfg`` describes.

    Deterministic for a given config; the three splits never share a prompt
    (for separate user files, as far as the user's files don't).
    """
    if cfg.name in ("file", "hf"):
        from ablate.data import files

        return files.load_file_splits(cfg) if cfg.name == "file" else files.load_hf_splits(cfg)
    assert cfg.n_train and cfg.n_validation and cfg.n_test  # from_dict requires counts for tasks
    return generate_splits(cfg.name, cfg.n_train, cfg.n_validation, cfg.n_test, cfg.seed, cfg.task_options)
