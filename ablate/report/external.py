"""Per-item results made elsewhere, as a study the report can read (``ablate compare``).

Two inputs, one shape (``arm, seed, item, score``, a score a fraction in [0, 1]: exact match,
accuracy, F1):

- a table: CSV, JSONL or Parquet with those four columns;
- lm-evaluation-harness ``--log_samples`` output, one run per model and seed, laid out as
  ``DIR/<arm>/<seed>/.../samples_<task>_<date>.jsonl`` (the ``--output_path`` of each run; the seed
  directory is a number, or ``seed`` followed by one). Each line of a samples file is one document
  (``doc_id``, ``doc``, ``target``, ``arguments``, ``resps``, ``filtered_resps``, in 0.4 also
  ``filter``, ``metrics``, ``doc_hash``, ``prompt_hash``, ``target_hash``) with each metric's value
  under its own name (``example.update(metrics)`` in lm-eval's evaluator); a task scored through
  several filters (``strict-match``, ``flexible-extract``) has one line per document and filter.
  Items are matched by ``doc_id``; ``metric`` picks the value, ``filter`` and ``task`` the lines.

Every way the inputs can disagree is a one-line ``ConfigError``: a missing column, a score outside
[0, 1], an item scored twice, a seed one arm has and another lacks, items that differ between runs,
a metric a file does not carry, several filters or tasks and none chosen.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ablate.errors import ConfigError, require
from ablate.report.collect import ITEM_COLUMNS, StudyData

COLUMNS = ("arm", "seed", "item", "score")
SEED_DIR = re.compile(r"^(?:seed[_-]?)?(\d+)$")
SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.:]+)\.jsonl$")


def read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    require(p.is_file(), "table", path, "no such file")
    readers = {
        ".csv": pd.read_csv,
        ".jsonl": lambda f: pd.read_json(f, lines=True),
        ".parquet": pd.read_parquet,
    }
    require(p.suffix in readers, "table", path, "a .csv, .jsonl or .parquet file")
    try:
        df = readers[p.suffix](p)
    except Exception as exc:  # noqa: BLE001 - a malformed file is the user's input
        raise ConfigError("table", path, f"cannot be read: {str(exc).splitlines()[0][:160]}") from None
    missing = [c for c in COLUMNS if c not in df]
    require(
        not missing, "table", path, f"missing column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})"
    )
    return df[list(COLUMNS)]


def read_lm_eval(root: str, metric: str, filter: str | None = None, task: str | None = None) -> pd.DataFrame:
    """``root/<arm>/<seed>/**/samples_<task>_<date>.jsonl`` -> ``arm, seed, item, score``."""
    base = Path(root)
    require(base.is_dir(), "lm_eval", root, "no such directory (DIR/<arm>/<seed>/ with samples_*.jsonl)")
    rows = []
    for arm_dir in sorted(d for d in base.iterdir() if d.is_dir()):
        for seed_dir in sorted(d for d in arm_dir.iterdir() if d.is_dir()):
            m = SEED_DIR.match(seed_dir.name)
            require(m is not None, "lm_eval", str(seed_dir), "a seed directory is a number or seed<number>")
            files = _samples(seed_dir, task)
            for path in files:
                for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if filter is not None and rec.get("filter", filter) != filter:
                        continue
                    require(
                        metric in rec, "metric", metric,
                        f"not in {path} line {line_no} (its metrics: {', '.join(rec.get('metrics') or _metric_keys(rec))})",
                    )  # fmt: skip
                    rows.append(
                        {"arm": arm_dir.name, "seed": int(m[1]), "item": rec["doc_id"], "score": rec[metric],
                         "filter": rec.get("filter", "none")}
                    )  # fmt: skip
    require(bool(rows), "lm_eval", root, "no samples_*.jsonl lines under DIR/<arm>/<seed>/")
    df = pd.DataFrame(rows)
    filters = sorted(df["filter"].unique())
    require(
        len(filters) == 1, "filter", filter,
        f"the samples were scored through several filters ({', '.join(filters)}): choose one, e.g. filter={filters[0]}",
    )  # fmt: skip
    return df[list(COLUMNS)]


def _samples(seed_dir: Path, task: str | None) -> list[Path]:
    files = sorted(p for p in seed_dir.rglob("samples_*.jsonl") if SAMPLES.match(p.name))
    require(
        bool(files),
        "lm_eval",
        str(seed_dir),
        "no samples_<task>_<date>.jsonl here (run lm_eval with --log_samples)",
    )
    tasks = sorted({SAMPLES.match(p.name)["task"] for p in files})  # type: ignore[index]
    if task is not None:
        require(
            task in tasks, "task", task, f"no samples of it in {seed_dir} (tasks there: {', '.join(tasks)})"
        )
        return [p for p in files if SAMPLES.match(p.name)["task"] == task]  # type: ignore[index]
    require(
        len(tasks) == 1,
        "task",
        None,
        f"{seed_dir} holds several tasks ({', '.join(tasks)}): choose one, e.g. task={tasks[0]}",
    )
    newest = max(files, key=lambda p: SAMPLES.match(p.name)["date"])  # type: ignore[index]
    return [newest]  # a re-run into the same directory: its latest samples


def _metric_keys(rec: dict) -> list[str]:
    skip = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics"}
    return [
        k for k, v in rec.items() if k not in skip and not k.endswith("_hash") and isinstance(v, int | float)
    ]


def check(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The pairing the verdict needs: every arm on the baseline's seeds and items, scores in [0, 1]."""
    df = df.copy()
    try:
        df["score"] = pd.to_numeric(df["score"]).astype(float)
        df["seed"] = pd.to_numeric(df["seed"]).astype(int)
    except (ValueError, TypeError) as exc:
        raise ConfigError("score", "", f"scores and seeds must be numbers: {exc}") from None
    df["arm"], df["item"] = df["arm"].astype(str), df["item"].astype(str)
    bad = df[~df["score"].between(0, 1) | df["score"].isna()]
    if len(bad):
        raise ConfigError(
            "score", float(bad["score"].iloc[0]),
            f"{len(bad)} score(s) outside [0, 1] (arm {bad['arm'].iloc[0]}, seed {bad['seed'].iloc[0]}): "
            "a fraction such as exact match or accuracy",
        )  # fmt: skip
    dup = df[df.duplicated(["arm", "seed", "item"], keep=False)]
    if len(dup):
        raise ConfigError(
            "item",
            dup["item"].iloc[0],
            f"scored twice for arm {dup['arm'].iloc[0]} seed {dup['seed'].iloc[0]}",
        )
    arms = list(dict.fromkeys(df["arm"]))
    require(baseline in arms, "baseline", baseline, f"not among the arms ({', '.join(arms)})")
    require(len(arms) >= 2, "baseline", baseline, "needs at least one other arm to compare with")
    seeds = {a: set(g["seed"]) for a, g in df.groupby("arm")}
    items = {(a, s): set(g["item"]) for (a, s), g in df.groupby(["arm", "seed"])}
    ref_seeds = seeds[baseline]
    ref_items = items[(baseline, min(ref_seeds))]
    for arm in arms:
        missing, extra = ref_seeds - seeds[arm], seeds[arm] - ref_seeds
        if missing or extra:
            raise ConfigError(
                "seed", sorted(missing or extra)[0],
                f"arm {arm} has seeds {sorted(seeds[arm])}, the baseline {baseline} {sorted(ref_seeds)}: "
                "every arm needs the same seeds (paired by seed)",
            )  # fmt: skip
        for seed in sorted(seeds[arm]):
            got = items[(arm, seed)]
            if got != ref_items:
                gone, more = sorted(ref_items - got), sorted(got - ref_items)
                raise ConfigError(
                    "item", (gone or more)[0],
                    f"arm {arm} seed {seed} has {len(got)} items, {len(gone)} of the baseline's missing and "
                    f"{len(more)} it lacks: every run must score the same items (matched by item / doc_id)",
                )  # fmt: skip
    return df


def study_data(
    df: pd.DataFrame, name: str, baseline: str, primary: Sequence[str] | None = None,
    metric: str = "the score column",
) -> StudyData:  # fmt: skip
    """``arm, seed, item, score`` as the report's frames: each arm a pseudo-study with only replicates;
    ``metric`` says in words what the score is (the report's header)."""
    arms = list(dict.fromkeys([baseline, *df["arm"]]))
    primary = [a for a in arms if a != baseline] if primary is None else list(primary)
    for a in primary:
        require(a in arms and a != baseline, "primary", a, f"not an arm to compare (arms: {', '.join(arms)})")
    frame = pd.DataFrame(
        {
            "arm": arms,
            "components": [[] for _ in arms],
            "quant": "none",
            "is_baseline": [a == baseline for a in arms],
            "matched_to": None,
            "objective": [["score"] for _ in arms],
            "directions": [["maximize"] for _ in arms],
            "best_config": [{} for _ in arms],
            "fixed": [{} for _ in arms],
            "n_trials_budget": math.nan,
            "primary": [a in primary for a in arms],
        }
    ).set_index("arm", drop=False)
    items = df.rename(columns={"score": "correct"}).assign(loss=math.nan)[ITEM_COLUMNS]
    reps = df.groupby(["arm", "seed"], as_index=False)["score"].mean().rename(columns={"score": "test_em"})
    reps["test_loss"] = math.nan
    return StudyData(
        name=name,
        arms=frame,
        trials=pd.DataFrame(columns=["arm", "number", "state"]),
        replicates=reps,
        items=items,
        metric=metric,
    )
