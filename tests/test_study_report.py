"""End to end on model=tiny: the report's per-item statistics come from the recorded item artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate import stats
from tests.test_cli import run_cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_report_agrees_with_the_recorded_item_artifacts(workdir, capsys):
    from mlflow import MlflowClient

    code, _, err = run_cli(["study=lora_vs_adapter", "model=tiny", "budget=smoke", "study.seeds=2"], capsys)
    assert code == 0, err
    report = workdir / "reports" / "lora_vs_adapter"
    summary = pd.read_csv(report / "summary.csv").set_index("arm")
    items = pd.read_csv(report / "items.csv")
    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlflow.db")
    exp = client.get_experiment_by_name("lora_vs_adapter")
    runs = client.search_runs([exp.experiment_id], "tags.phase = 'replicate'")
    matrices = {}
    for arm in summary.index:
        mine = sorted((r for r in runs if r.data.tags["arm"] == arm), key=lambda r: int(r.data.tags["seed"]))
        assert len(mine) == 2
        rows = []
        for r in mine:
            path = client.download_artifacts(
                r.info.run_id, "items/test.parquet", str(workdir / r.info.run_id)
            )
            art = pd.read_parquet(path)
            assert art["correct"].mean() == pytest.approx(r.data.metrics["test_em"])  # items add up to EM
            mine_csv = items[(items["arm"] == arm) & (items["seed"] == int(r.data.tags["seed"]))]
            assert mine_csv["item"].tolist() == art["index"].tolist()
            assert mine_csv["correct"].tolist() == art["correct"].tolist()
            assert mine_csv["loss"].to_numpy() == pytest.approx(art["loss"].to_numpy())
            rows.append(art["correct"].to_numpy(dtype=float))
        matrices[arm] = np.array(rows)
        assert summary.loc[arm, "em_mean"] == pytest.approx(matrices[arm].mean())
        assert summary.loc[arm, "items"] == matrices[arm].shape[1]
    for arm in summary.index.drop("lora"):
        c = stats.compare(matrices[arm], matrices["lora"], metric="em", sesoi=0.02)
        assert summary.loc[arm, ["delta_diff", "delta_lo", "delta_hi"]].tolist() == pytest.approx(
            [c.diff, c.lo, c.hi]
        )
    md = (report / "report.md").read_text()
    assert "Primary family" in md and "nan" not in md.split("## Verdict")[1].split("## Arms")[0].lower()
