"""ablate bundle: one archive with the study's storage, plan, versions, data hashes and report; and
``ablate report bundle=FILE`` rebuilding the identical verdict elsewhere, without MLflow, the
original storage or torch."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import optuna
import pytest

from ablate.data.tasks import generate_splits
from tests.test_cli import run_cli
from tests.tiny_study import STUDY, finished_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return finished_study(tmp_path_factory)


def test_bundle_rebuilds_the_identical_summary_in_an_empty_directory(
    study_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(study_dir)
    out = tmp_path / "b.tar.gz"
    code, stdout, err = run_cli(["bundle", f"study={STUDY}", "model=tiny", f"out={out}"], capsys)
    assert code == 0, err
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(f"{STUDY}/manifest.json"))
        bundled = tar.extractfile(f"{STUDY}/report/summary.csv").read()
    assert {f"{STUDY}/study.db", f"{STUDY}/report/items.csv", f"{STUDY}/report/report.md"} <= set(names)
    assert manifest["baseline"] == "lora" and manifest["versions"]["optuna"] == optuna.__version__
    assert manifest["plan"]["study.seeds"] == 2  # the recorded plan, as the study checks it on resume
    # the data hashes are those of the splits the plan draws, regenerated from its seed
    plan = manifest["plan"]
    splits = generate_splits(
        plan["data.name"], plan["data.n_train"], plan["data.n_validation"], plan["data.n_test"], plan["data.seed"],
        {k.split(".")[-1]: v for k, v in plan.items() if k.startswith("data.task_options.")},
    )  # fmt: skip
    import hashlib

    test = hashlib.sha256(json.dumps([[e.prompt, e.response] for e in splits["test"]]).encode()).hexdigest()
    assert manifest["data_splits_sha256"]["test"] == test
    # elsewhere: an empty directory, no MLflow, no study storage, and torch never imported
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    code = (
        "import sys; from ablate.cli import main; "
        f"main(['report', 'bundle={out}']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=empty, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (empty / "reports" / STUDY / "summary.csv").read_bytes() == bundled
    assert not (empty / "mlflow.db").exists() and not (empty / "studies").exists()


@pytest.mark.parametrize(
    "args,start",
    [
        (["report", "bundle=nope.tar.gz"], "error: bundle='nope.tar.gz': no such file"),
        (
            ["bundle", f"study={STUDY}", "model=tiny", "out=b.zip"],
            "error: out='b.zip': a bundle is a .tar.gz file",
        ),
        (
            ["bundle", f"study={STUDY}", "model=tiny", "out=b.tar.gz", "weights=[studies]"],
            "error: weights='studies': not an export directory",
        ),
    ],
)
def test_bad_bundle_arguments_are_one_line_errors(study_dir, tmp_path, monkeypatch, capsys, args, start):
    monkeypatch.chdir(study_dir)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith(start) and len(err.strip().splitlines()) == 1, err


def test_bundle_carries_exported_weights_hashed(study_dir, tmp_path, monkeypatch, capsys):
    """``weights=[DIR]``: an ``ablate export`` directory travels in the bundle, every file hashed."""
    import hashlib

    monkeypatch.chdir(study_dir)
    code, _, err = run_cli(["export", f"study={STUDY}", "model=tiny", f"out={tmp_path / 'winner'}"], capsys)
    assert code == 0, err
    out = tmp_path / "w.tar.gz"
    code, _, err = run_cli(
        ["bundle", f"study={STUDY}", "model=tiny", f"out={out}", f"weights=[{tmp_path / 'winner'}]"], capsys
    )
    assert code == 0, err
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile(f"{STUDY}/manifest.json"))
        carried = tar.extractfile(f"{STUDY}/exports/winner/components.safetensors").read()
    want = (tmp_path / "winner" / "components.safetensors").read_bytes()
    assert carried == want
    assert manifest["exports"]["winner"]["components.safetensors"] == hashlib.sha256(want).hexdigest()
    assert "ablate.json" in manifest["exports"]["winner"]
    from ablate import bundle, export

    assert bundle.EXPORT_FILE == export.EXPORT_FILE
