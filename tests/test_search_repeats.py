"""study.search_repeats: every arm searched k times independently, each search's best replicated on
seeds of its own, and the comparison's rows are searches (each the mean of its seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablate import stats
from ablate.report import collect as C
from ablate.report import numbers as N
from ablate.storage import SEARCH_SEED_STRIDE, search_of
from tests.test_cli import run_cli
from tests.test_study import storage_studies


def test_by_search_averages_the_seeds_of_each_search():
    seeds = [1, 2, 10_001, 10_002, 20_001, 20_002]
    m = pd.DataFrame(np.arange(12, dtype=float).reshape(6, 2), index=seeds)
    got = N.by_search(m)
    assert list(got.index) == [1, 2, 3] and [search_of(s) for s in seeds] == [1, 1, 2, 2, 3, 3]
    assert got.to_numpy().tolist() == [[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]
    assert N.by_search(m.iloc[:2]).shape == (2, 2)  # one search: the seeds are the rows
    # a study recorded without search repeats (or results made elsewhere) never groups: its seeds
    # are any numbers (0, 42, 20001), not search ids
    assert N.by_search(m, searches=False).shape == (6, 2) and search_of(0) == 1


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_three_searches_each_replicated_on_seeds_of_its_own(workdir, capsys):
    args = [
        "study=lora_vs_adapter", "model=tiny", "budget=smoke", "study.search_repeats=3", "study.seeds=2",
        "study.n_trials=1", "study.matched=false", "study.factorial=false", "study.interference=false",
        "tracking.backend=none",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    url = "sqlite:///studies/lora_vs_adapter.db"
    studies = storage_studies(url)
    for arm in ("lora", "lora+adapter"):
        for r, suffix in ((1, ""), (2, "/search2"), (3, "/search3")):
            search = studies[f"lora_vs_adapter/{arm}{suffix}"]
            assert len(search.trials) == 1 and search.user_attrs.get("search_repeat", 1) == r
            offset = SEARCH_SEED_STRIDE * (r - 1)
            assert sorted(map(int, search.user_attrs["replicates"])) == [offset + 1, offset + 2]
            if arm == "lora+adapter":  # the warm start trains on a seed of its search's own
                assert search.trials[0].user_attrs["search_seed"] == 1_000_000 + 2_000_000 * (r - 1)
    # optuna-dashboard names the values (not "Objective 0")
    assert studies["lora_vs_adapter/lora"].metric_names == ["val_loss"]
    assert studies["lora_vs_adapter/lora/search2/replicate"].metric_names == ["test_em"]
    # the searches differ: another sampler stream (not one search's trials three times)
    params = [
        [t.params for t in studies[f"lora_vs_adapter/lora{s}"].trials] for s in ("", "/search2", "/search3")
    ]
    assert params[0] != params[1] and params[1] != params[2]

    # the report: paired by seed, then one row per search (the mean of its two seeds), by hand
    store = C.open_storage(url, "lora_vs_adapter")
    data = C.collect("lora_vs_adapter", url, None)
    assert sorted(set(data.replicates["seed"])) == [1, 2, 10_001, 10_002, 20_001, 20_002]
    items = data.items
    by_hand = {}
    for arm in ("lora+adapter", "lora"):
        m = items[items["arm"] == arm].pivot(index="seed", columns="item", values="correct")
        by_hand[arm] = np.stack([m.loc[[o + 1, o + 2]].mean(axis=0) for o in (0, 10_000, 20_000)])
    want = stats.compare(by_hand["lora+adapter"], by_hand["lora"], metric="em", sesoi=0.02, alpha=0.05)
    df, comps, _, _ = N.numbers_frame(data, "lora", 0.02, 0.05)
    got = comps["lora+adapter"]
    assert got.n_seeds == 3 and got.n_items == by_hand["lora"].shape[1]
    assert (got.diff, got.lo, got.hi, got.verdict) == pytest.approx(
        (want.diff, want.lo, want.hi, want.verdict)
    )
    assert df.loc["lora", "seeds"] == 6
    assert store is not None
    # the report states it, and its table is these numbers
    report = (workdir / "reports" / "lora_vs_adapter" / "report.md").read_text()
    assert "3 independent searches per arm" in report
    summary = pd.read_csv(workdir / "reports" / "lora_vs_adapter" / "summary.csv").set_index("arm")
    assert summary.loc["lora+adapter", "delta_diff"] == pytest.approx(want.diff)
