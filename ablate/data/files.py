"""User data: JSONL, CSV and Parquet files, or a Hugging Face dataset.

Everything a user's data can get wrong (missing file, empty file, bad syntax,
missing column, a non-string cell) becomes a one-line ``ConfigError`` naming
the config key and value, and the row where it helps. JSONL is parsed with the
``json`` module rather than pandas, because pandas' JSON reader reports syntax
errors without a line number and silently turns strings like ``2021-03-05``
into timestamps; CSV is read as text for the same reason.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablate.data.config import FORMATS, SPLITS, DataConfig, Example
from ablate.errors import ConfigError, require

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_EXTENSIONS |= {".parquet": "parquet", ".pq": "parquet"}
_HF_SPLIT_NAMES = {"validation": ("validation", "valid", "dev"), "test": ("test",)}


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception message squeezed onto one line, so a ConfigError stays one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def infer_format(path: str, fmt: str | None, key: str = "data.path") -> str:
    """``fmt`` if given, else the format implied by the file extension."""
    if fmt is not None:
        return fmt
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    require(found is not None, key, path, f"cannot tell the format; set data.format to one of {FORMATS}")
    return found


def read_columns(path: str, fmt: str | None, key: str = "data.path") -> dict[str, list[Any]]:
    """Read a file into ``column -> values``; every failure is a ConfigError on ``key``."""
    p = Path(path)
    require(p.is_file(), key, path, "no such file" if not p.exists() else "not a file")
    fmt = infer_format(path, fmt, key)
    require(p.stat().st_size > 0, key, path, "file is empty")
    if fmt == "jsonl":
        columns = _read_jsonl(p, key)
    else:
        import pandas as pd

        try:
            if fmt == "csv":
                df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
            else:
                df = pd.read_parquet(p)
        except (ValueError, OSError) as e:  # pandas/pyarrow parse errors subclass these
            raise ConfigError(key, path, f"cannot read as {fmt}: {one_line(e)}") from e
        columns = {str(c): df[c].tolist() for c in df.columns}
    require(any(columns.values()), key, path, "file has no rows")
    return columns


def _read_jsonl(p: Path, key: str) -> dict[str, list[Any]]:
    rows: list[dict[str, Any]] = []
    try:
        # utf-8-sig: a byte-order mark (what some editors write) is not part of the first row,
        # as pandas already treats it for CSV
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(key, str(p), f"not UTF-8 text: {one_line(e)}") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            reason = f"line {lineno} is not JSON: {e.msg} at column {e.colno}"
            raise ConfigError(key, str(p), reason) from e
        except RecursionError:  # brackets nested past Python's parser depth
            raise ConfigError(key, str(p), f"line {lineno} nests too deeply to be a data row") from None
        require(isinstance(row, dict), key, str(p), f"line {lineno} is not a JSON object")
        rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def to_examples(
    columns: Mapping[str, Sequence[Any]], prompt_field: str, response_field: str, source: str
) -> list[Example]:
    """Pair up the prompt and response columns, rejecting missing or non-string cells."""
    for key, field in (("data.prompt_field", prompt_field), ("data.response_field", response_field)):
        require(field in columns, key, field, f"no such field in {source}; fields: {list(columns)}")
    out = []
    for i, (prompt, response) in enumerate(zip(columns[prompt_field], columns[response_field], strict=True)):
        for key, field, value in (
            ("data.prompt_field", prompt_field, prompt),
            ("data.response_field", response_field, response),
        ):
            if not isinstance(value, str) or value == "":
                missing = value is None or (isinstance(value, float) and math.isnan(value))
                what = "missing" if missing else f"{value!r} ({type(value).__name__})"
                what = "empty" if value == "" else what
                raise ConfigError(key, field, f"row {i + 1} of {source} is {what}, not text")
        out.append(Example(prompt, response))
    return out


def load_file_splits(cfg: DataConfig) -> dict[str, list[Example]]:
    """Train/validation/test from ``data.path``, plus optional separate split files."""
    assert cfg.path is not None  # DataConfig.from_dict guarantees it for data=file

    def read(path: str, key: str) -> list[Example]:
        columns = read_columns(path, cfg.format, key)
        return to_examples(columns, cfg.prompt_field, cfg.response_field, path)

    pools: dict[str, list[Example] | None] = {"train": read(cfg.path, "data.path")}
    for split in SPLITS[1:]:
        path = getattr(cfg, f"{split}_path")
        pools[split] = None if path is None else read(path, f"data.{split}_path")
    return assemble(pools, cfg, "data.path", cfg.path)


def load_hf_splits(cfg: DataConfig) -> dict[str, list[Example]]:
    """Train/validation/test from a Hugging Face dataset (``datasets`` imported lazily)."""
    key, name = "data.hf_name", cfg.hf_name
    try:
        import datasets
    except ImportError as e:
        raise ConfigError(key, name, "needs the datasets package: pip install datasets") from e
    try:
        loaded = datasets.load_dataset(name, cfg.hf_config)
    except Exception as e:  # offline hub, unknown id, bad config name: all the user's to fix
        raise ConfigError(key, name, f"cannot load: {one_line(e)}") from e
    require("train" in loaded, key, name, f"has no train split; splits: {list(loaded)}")

    def examples(split: str) -> list[Example]:
        ds, used = loaded[split], (cfg.prompt_field, cfg.response_field)
        columns = {c: list(ds[c]) if c in used else [] for c in ds.column_names}
        return to_examples(columns, cfg.prompt_field, cfg.response_field, f"{name}[{split}]")

    pools: dict[str, list[Example] | None] = {"train": examples("train")}
    for split in SPLITS[1:]:
        found = [s for s in _HF_SPLIT_NAMES[split] if s in loaded]
        pools[split] = examples(found[0]) if found else None
    return assemble(pools, cfg, key, name)


def assemble(
    pools: Mapping[str, list[Example] | None], cfg: DataConfig, key: str, value: str | None
) -> dict[str, list[Example]]:
    """Carve missing validation/test splits out of the train pool, then cap every split.

    Carving drops repeated prompts first, so one prompt cannot land in two
    splits; everything is shuffled by ``data.seed`` before ``n_*`` caps apply,
    so a capped split is a random sample, not the head of the file.
    """
    train = list(pools["train"] or [])
    carve = [s for s in SPLITS[1:] if pools.get(s) is None]
    out: dict[str, list[Example]] = {}
    if carve:
        seen: set[str] = set()
        train = [ex for ex in train if not (ex.prompt in seen or seen.add(ex.prompt))]
    random.Random(f"train:{cfg.seed}").shuffle(train)
    if carve:
        fracs = dict(zip(SPLITS, cfg.split_fractions, strict=True))
        total = fracs["train"] + sum(fracs[s] for s in carve)
        start = 0
        for split in carve:
            reason = f"{split} fraction must be > 0: {value} has no {split} split"
            require(fracs[split] > 0, "data.split_fractions", list(cfg.split_fractions), reason)
            count = round(len(train) * fracs[split] / total)
            require(count > 0, key, value, f"{len(train)} distinct prompts are too few for a {split} split")
            out[split] = train[start : start + count]
            start += count
        train = train[start:]
        require(len(train) > 0, key, value, "no examples left for the train split")
    out["train"] = train
    for split in SPLITS[1:]:
        if split not in out:  # given as its own file or hub split
            out[split] = list(pools[split] or [])
            random.Random(f"{split}:{cfg.seed}").shuffle(out[split])
    for split in SPLITS:
        examples = out[split]
        cap = getattr(cfg, f"n_{split}")
        out[split] = examples if cap is None else examples[:cap]
    return {split: out[split] for split in SPLITS}
