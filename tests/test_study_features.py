"""Study features on model=tiny: one base per arm with its weight bytes, the enforced matched arm,
capacity levels, LoRA interference."""

from __future__ import annotations

import gc
import weakref

import pytest
from optuna.trial import TrialState

from ablate.schema import StudyConfig
from ablate.study.bench import Bench
from ablate.study.config import parse_arms
from tests.test_cli import run_cli
from tests.test_study import SMOKE, composed, storage_studies


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_one_base_at_a_time_and_its_weight_bytes():
    cfg = composed("study=qlora_vs_lora", "model=tiny", "budget=smoke")
    spec = StudyConfig.from_dict(cfg["study"])
    fp32, nf4 = parse_arms(spec, "none")[:2]
    bench = Bench(cfg, spec)
    first = bench.base(bench.config(fp32, {}))
    gone = weakref.ref(first.model)
    expected = sum(t.numel() * 4 for t in [*first.model.parameters(), *first.model.buffers()])
    assert bench.base_bytes == expected  # float32: 4 bytes per element
    full = bench.base_bytes
    del first
    quantised = bench.base(bench.config(nf4, {}))
    gc.collect()
    assert gone() is None  # the full-precision base was freed before the NF4 one was measured
    assert bench.base_bytes < full and bench.loaded[0] == "nf4"
    assert bench.base(bench.config(nf4, {})) is quantised  # same quantisation: no reload


def test_matched_arm_outside_ten_percent_stops_the_study(workdir, capsys):
    """LoRA r=1 on attention + a width-2 adapter: 2,184 params; matched ranks give 1,792 or 2,688."""
    args = ["study=lora_vs_adapter", *SMOKE, "tracking=none", "study.n_trials=1", "study.factorial=false"]
    args += ["search.lora.r.low=1", "search.lora.r.high=1", "search.lora.targets={choices:[attention]}"]
    args += ["search.adapter.width.low=2", "search.adapter.width.high=2"]
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Failed to load CPU")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: study.matched=")
    assert all(s in lines[0] for s in ("matched-lora 1,792", "lora+adapter 2,184", "-17.9%")), lines[0]
    studies = storage_studies("sqlite:///studies/lora_vs_adapter.db")
    assert studies["lora_vs_adapter/matched-lora"].user_attrs["matched_target_params"] == 2184
    assert not studies["lora_vs_adapter/matched-lora"].trials  # stopped before any matched trial


def test_capacity_levels_replicate_each_best_config_scaled(workdir, capsys):
    args = ["study=capacity", *SMOKE, "tracking=none", "study.n_trials=2", "study.seeds=1"]
    args += ["study.capacity_levels=[1,2]", "study.factorial=false", "study.matched=false"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    studies = storage_studies("sqlite:///studies/capacity.db")
    for arm in ("lora", "lora+adapter"):
        study = studies[f"capacity/{arm}"]
        capacity = study.user_attrs["capacity"]
        assert sorted(capacity) == ["1", "2"] and capacity["1"] == study.user_attrs["replicates"]
        reps = studies[f"capacity/{arm}/capacity2"].trials
        assert [(t.params["seed"], t.state) for t in reps] == [(1, TrialState.COMPLETE)]
        assert len(reps[0].user_attrs["items"]["correct"]) == 16
        one, two = (capacity[k]["1"] for k in ("1", "2"))
        lora_params = (one["params/lora"], two["params/lora"])
        assert lora_params[1] == 2 * lora_params[0]  # r doubled: exactly twice the LoRA params
        if arm == "lora+adapter":  # 2hw + w + h per site: a little under twice
            assert 1.8 * one["params/adapter"] < two["params/adapter"] < 2 * one["params/adapter"]
    assert "capacity2" not in {n.rsplit("/", 1)[-1] for n in studies if n.count("/") == 1}
