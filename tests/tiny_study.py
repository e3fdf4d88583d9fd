"""One finished study on model=tiny, run once per test session and shared by the export and MLflow UI
tests (a real study: trained components logged to MLflow, a report, dataset inputs)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from ablate.cli import main

STUDY = "lora_vs_adapter"
# arms: lora (baseline), lora+adapter, matched-lora; 3 search trials and 2 replicate seeds each
ARGS = [f"study={STUDY}", "model=tiny", "budget=smoke", "study.factorial=false"]
_done: dict[str, Path] = {}


def finished_study(tmp_path_factory) -> Path:
    """The directory the study ran in: mlflow.db, studies/, reports/ (relative paths, as a user has them)."""
    if "dir" not in _done:
        root = tmp_path_factory.mktemp("finished-study")
        here = Path.cwd()
        out, code = io.StringIO(), 0
        os.chdir(root)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                main(list(ARGS))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.chdir(here)
        assert code == 0, out.getvalue()[-3000:]
        _done["dir"] = root
    return _done["dir"]
