"""A study in one file a reviewer can re-check: ``ablate bundle study=NAME out=FILE``, and
``ablate report bundle=FILE`` to rebuild its verdict on another machine.

The archive (``.tar.gz``) holds:

- ``study.db``: every Optuna study of ``NAME`` (arms, replications, per-item records, the recorded
  plan, the design's looks) copied into SQLite with Optuna's own ``copy_study``, from SQLite or
  PostgreSQL alike;
- ``report/``: the report built from that copy (``summary.csv``, ``items.csv``, ``report.md``, ...);
- ``exports/<dir>/``: with ``weights=[DIR, ...]``, directories written by ``ablate export`` (the
  winners' components, card and ``ablate.json``), each checked to be an export and hashed;
- ``manifest.json``: the study, its baseline, the recorded plan (the resolved configuration of every
  arm's search), the versions of the packages that made it, and a SHA-256 of every data split the
  plan's data configuration draws (generated tasks are regenerated from their seed; files are
  hashed as they are).

A study over several tasks (``study.tasks``) bundles every task's study (``NAME.<task>/...``), the
pooled report with each task's beside it, and per task its plan and split hashes.

Rebuilding reads ``study.db`` alone: no MLflow, no original storage, no torch (the report never
imports it), so ``summary.csv`` comes out identical; learning curves, which live in MLflow, are the
one part a bundle does not carry.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError, redact, require

#: ``ablate.export.EXPORT_FILE`` (the bundle layer sits beside export and does not import it; a test
#: checks the two agree)
EXPORT_FILE = "ablate.json"

PACKAGES = ("ablate", "optuna", "numpy", "pandas", "scipy", "statsmodels", "torch", "transformers", "peft")
PACKAGES += ("bitsandbytes", "mlflow", "hydra-core")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def split_hashes(data: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each split the data configuration draws (built-in tasks regenerated, files read)."""
    from ablate.data.tasks import TASKS, generate_splits

    name = data.get("name")
    if name in TASKS:
        splits = generate_splits(
            name,
            data["n_train"],
            data["n_validation"],
            data["n_test"],
            data["seed"],
            data.get("task_options"),
        )
        return {
            split: hashlib.sha256(json.dumps([[e.prompt, e.response] for e in examples]).encode()).hexdigest()
            for split, examples in splits.items()
        }
    out = {}
    for key in ("path", "validation_path", "test_path"):
        if data.get(key) and Path(data[key]).is_file():
            out[key] = hashlib.sha256(Path(data[key]).read_bytes()).hexdigest()
    return out or {"note": f"data={name}: not hashed (a Hugging Face dataset carries its own fingerprint)"}


def _plan_data(plan: dict[str, Any]) -> dict[str, Any]:
    """The data configuration a recorded (flat ``key: value``) plan holds."""
    data: dict[str, Any] = {}
    for key, value in plan.items():
        if key.startswith("data.") and not key.endswith(".sha256"):
            parts = key.split(".")[1:]
            node = data
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
    return data


def _exports(dirs: list[str]) -> dict[str, Path]:
    """``weights=[DIR, ...]``: each an ``ablate export`` directory (its ``ablate.json``), by name."""
    found: dict[str, Path] = {}
    for d in dirs:
        path = Path(d)
        require(
            (path / EXPORT_FILE).is_file(),
            "weights",
            d,
            f"not an export directory (no {EXPORT_FILE}): ablate export writes one",
        )
        require(
            path.name not in found,
            "weights",
            d,
            f"two exports named {path.name}: give distinct directory names",
        )
        found[path.name] = path
    return found


def write_bundle(
    study: str, storage: str, out: Path, baseline: str, tasks: list[str] | None = None, weights: Sequence[str] = (),
) -> Path:  # fmt: skip
    """``out`` (a ``.tar.gz``): the study's storage copy, its report and the manifest; with ``tasks``
    (``study.tasks``' labels) every task's study and the pooled report."""
    import optuna

    from ablate.report import build_report
    from ablate.report.collect import open_storage
    from ablate.report.tasks import build_task_report
    from ablate.storage import task_study

    out = Path(out)
    require(
        out.name.endswith(".tar.gz"),
        "out",
        str(out),
        "a bundle is a .tar.gz file, e.g. out=lora_vs_adapter.tar.gz",
    )
    require(not out.is_dir(), "out", str(out), "is a directory: name the .tar.gz file to write")
    exports = _exports(list(weights))  # checked before anything is read or written
    source = open_storage(storage, study)
    studies = {t: task_study(study, t) for t in tasks} if tasks else {"": study}
    every = optuna.study.get_all_study_names(storage=source)
    names = [n for n in every if any(n.startswith(f"{s}/") for s in studies.values())]
    for task, name in studies.items():
        require(
            any(n.startswith(f"{name}/") for n in names),
            "study",
            study,
            f"not in storage {redact(storage)}" + (f" (no study {name} for task {task})" if task else ""),
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        copy = f"sqlite:///{root / 'study.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in names:
            optuna.copy_study(from_study_name=name, from_storage=source, to_storage=copy)
        if tasks:
            build_task_report(study, list(tasks), copy, None, root / "report", baseline=baseline)
        else:
            build_report(study, copy, None, root / "report", baseline=baseline)
        plans = {
            task: optuna.load_study(study_name=f"{name}/{baseline}", storage=copy).user_attrs.get("plan")
            or {}
            for task, name in studies.items()
        }
        hashes = {task: split_hashes(_plan_data(plan)) if plan else {} for task, plan in plans.items()}
        manifest = {
            "study": study,
            "baseline": baseline,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "storage": redact(storage),
            "studies": names,
            "versions": versions(),
        }
        if tasks:  # each task is a study of its own: its plan and its splits
            manifest |= {"tasks": list(tasks), "plans": plans, "data_splits_sha256": hashes}
        else:
            manifest |= {"plan": plans[""], "data_splits_sha256": hashes[""]}
        if exports:  # the winners' weights as exported, each file hashed
            import shutil

            manifest["exports"] = {}
            for name, path in exports.items():
                shutil.copytree(path, root / "exports" / name)
                manifest["exports"][name] = {
                    str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
                    for f in sorted(path.rglob("*"))
                    if f.is_file()
                }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(root, arcname=study)
        partial.replace(out)  # a bundle is written whole or not at all
    return out


def rebuild(bundle: str, out_dir: Path | None = None) -> Path:
    """``ablate report bundle=FILE``: the report rebuilt from the bundle's storage copy alone."""
    from ablate.report import build_report

    path = Path(bundle)
    require(path.is_file(), "bundle", bundle, "no such file")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ConfigError("bundle", bundle, f"not a bundle written by ablate bundle ({exc})") from None
        found = list(Path(tmp).glob("*/manifest.json"))
        require(
            len(found) == 1, "bundle", bundle, "holds no manifest.json: not a bundle written by ablate bundle"
        )
        manifest = json.loads(found[0].read_text(encoding="utf-8"))
        study, root = manifest["study"], found[0].parent
        out = Path(out_dir) if out_dir is not None else Path("reports") / study
        copy = f"sqlite:///{root / 'study.db'}"
        if manifest.get("tasks"):
            from ablate.report.tasks import build_task_report

            return build_task_report(study, manifest["tasks"], copy, None, out, baseline=manifest["baseline"])
        return build_report(study, copy, None, out, baseline=manifest["baseline"])
