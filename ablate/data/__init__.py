"""Data: built-in generated tasks, user files and HF datasets -> encoded batches.

Public surface (torch-free; tokenizing and batching are ``ablate.data.tokenize``)::

    splits = load_splits(DataConfig.from_dict(cfg.data))  # {"train": [...], ...}
    enc = encode(splits["train"], tokenizer, cfg.data.max_length)  # enc.dropped
    batches = make_batches(enc, 8, shuffle=True, seed=0, pad_id=tokenizer.pad_token_id)
"""

from __future__ import annotations

from ablate.data.config import SPLITS, DataConfig, Example
from ablate.data.tasks import TASKS, generate_splits

__all__ = ["SPLITS", "TASKS", "DataConfig", "Example", "load_splits"]


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
