"""Variant arms: components plus fixed field values under a name, and presets (MAM, UniPELT) that
``ablate train peft=NAME`` composes and a study arm NAME expands to, the same fields either way."""

from __future__ import annotations

import csv

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate.cli import CONF, normalize_overrides
from ablate.components import build_configs
from ablate.components.stack import expected_params
from ablate.errors import ConfigError
from ablate.schema import StudyConfig, TrialConfig
from ablate.search import parse_space
from ablate.study.bench import Bench
from ablate.study.config import parse_arms
from tests.test_cli import run_cli
from tests.test_study import SMOKE, composed, storage_studies


def arms_of(*specs, **study):
    spec = StudyConfig.from_dict({"name": "t", "arms": ["lora", *specs], **study})
    return {a.name: a for a in parse_arms(spec, "none")}


def test_a_named_arm_fixes_its_fields_and_drops_them_from_the_search():
    cfg = composed("study=adapter_variants")
    arm = arms_of(
        {"adapter_parallel": {"peft": "adapter", "set": {"adapter.mode": "parallel", "adapter.scaling": 4}}}
    )["adapter_parallel"]
    assert arm.components == ("adapter",) and arm.role == "single"
    assert arm.fixed_fields == {"adapter": {"mode": "parallel", "scaling": 4}}
    names = [d.name for d in parse_space(cfg["search"], arm.components, dict(arm.fixed))]
    assert names == ["adapter.width", "adapter.lr", "adapter.dropout"]  # nothing fixed was searched anyway
    fixed_width = {"adapter.width": 8, "adapter.mode": "parallel"}
    names = [d.name for d in parse_space(cfg["search"], ("adapter",), fixed_width)]
    assert names == ["adapter.lr", "adapter.dropout"]
    # the trial config: composed defaults, then the fixed fields, then the searched values
    bench = Bench(cfg, StudyConfig.from_dict(cfg["study"]))
    trial = bench.config(arm, {"adapter": {"lr": 3e-3}})
    assert (trial.peft["adapter"].mode, trial.peft["adapter"].scaling, trial.peft["adapter"].lr) == (
        "parallel",
        4.0,
        3e-3,
    )
    assert trial.peft["adapter"].width == cfg["peft"]["adapter"]["width"]


def test_nested_set_spelling_and_quant():
    arm = arms_of(
        {"qa": {"peft": "lora+adapter", "set": {"adapter": {"placement": "pfeiffer"}}, "quant": "nf4"}}
    )["qa"]
    assert arm.fixed_fields == {"adapter": {"placement": "pfeiffer"}} and arm.quant == "nf4"
    assert arm.role == "combination"


def test_a_variant_gets_no_automatic_x_alone_arm():
    """The factorial's X alone would have to carry the variant's fixed X fields: list it yourself."""
    arms = arms_of(
        "lora+adapter", {"lora_par": {"peft": "lora+adapter", "set": {"adapter.mode": "parallel"}}}
    )
    assert list(arms) == ["lora", "adapter", "lora+adapter", "lora_par", "matched-lora"]


BAD = [
    ({"x": {"peft": "adapter", "set": {"lora.r": 4}}}, "study.arms.x.set.lora.r=4", "this arm's components"),
    (
        {"x": {"peft": "adapter", "set": {"adapter.wdith": 4}}},
        "study.arms.x.set.adapter.wdith=4",
        "unknown field",
    ),
    (
        {"x": {"peft": "adapter", "set": {"adapter.mode": "diagonal"}}},
        "study.arms.x.set.adapter.mode",
        "one of",
    ),
    (
        {"x": {"peft": "adapter", "set": {"adapter.width": "wide"}}},
        "study.arms.x.set.adapter.width",
        "integer",
    ),
    ({"x": {"peft": "adapter", "set": {"adapter": 3}}}, "study.arms.x.set.adapter=3", "component.field"),
    ({"x": {"peft": "adpter"}}, "study.arms.x.peft='adpter'", "unknown component"),
    ({"x": {"set": {"adapter.mode": "serial"}}}, "study.arms.x.peft=None", "missing"),
    ({"x": {"peft": "adapter", "sets": {}}}, "study.arms.x.sets={}", "unknown key"),
    ({"x": {"peft": "adapter", "quant": "int3"}}, "study.arms.x.quant='int3'", "unknown quant"),
    ({"lora+adapter": {"peft": "adapter"}}, "study.arms='lora+adapter'", "other than a component set"),
    ({"mam": {"peft": "adapter"}}, "study.arms='mam'", "other than a component set"),
    ({"a/b": {"peft": "adapter"}}, "study.arms='a/b'", "letters, digits"),
    ({"x": {"peft": "adapter"}, "y": {"peft": "lora"}}, "study.arms=", "one mapping"),
    ({"x": "adapter"}, "study.arms.x='adapter'", "must be a mapping"),
]


@pytest.mark.parametrize(
    "spec,start,reason", BAD, ids=[b[1].split("=")[0] + str(i) for i, b in enumerate(BAD)]
)
def test_bad_variant_arms_are_one_line_errors(spec, start, reason):
    with pytest.raises(ConfigError) as err:
        arms_of(spec)
    line = err.value.one_line()
    assert "\n" not in line and line.startswith(f"error: {start}"), line
    assert reason in line, line


def test_a_bad_variant_from_the_command_line_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    arms = "study.arms=[lora,{x:{peft:adapter,set:{adapter:{mode:diagonal}}}}]"
    code, _, err = run_cli(["study=adapter_variants", *SMOKE, "tracking=none", arms], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Failed to load CPU")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: study.arms.x.set.adapter.mode='diagonal': must be one of"), lines[0]
    assert not (tmp_path / "studies").exists()  # nothing written


def _train_config(*overrides: str) -> TrialConfig:
    args = normalize_overrides([*overrides, "model=tiny"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return TrialConfig.from_dict(OmegaConf.to_container(compose("config", overrides=args), resolve=True))


@pytest.mark.parametrize(
    "preset,components", [("mam", ("adapter", "prefix")), ("unipelt", ("lora", "adapter", "prefix"))]
)
def test_a_preset_is_the_same_in_train_and_in_a_study(preset, components):
    """``ablate train peft=mam`` and the study arm ``mam`` build identical component configs."""
    train = _train_config(f"peft={preset}")
    cfg = composed("study=lora_vs_mam", "model=tiny")
    arm = arms_of(preset)[preset]
    assert train.arm == arm.components == components
    study_trial = Bench(cfg, StudyConfig.from_dict(cfg["study"])).config(arm, {})
    assert {n: c.to_dict() for n, c in study_trial.peft.items()} == {
        n: c.to_dict() for n, c in train.peft.items()
    }


def test_mam_is_the_papers_configuration_scaled_to_the_model(tiny_bases):
    """Prefix l=30 on attention; parallel FFN adapter, scaling 4, width 512 at h=1024 -> h/2."""
    mam = _train_config("peft=mam").peft
    assert mam["prefix"].length == 30 and not mam["prefix"].reparam
    a = mam["adapter"]
    assert (a.mode, a.placement, a.scaling, a.width_ratio) == ("parallel", "ffn", 4.0, 0.5)
    config = tiny_bases["none"].model.config  # h=64, L=2, kv heads 2 x head_dim 16
    counts = expected_params(config, mam)
    assert counts == {"adapter": 2 * (2 * 64 * 32 + 32 + 64), "prefix": 2 * 2 * 30 * 32}
    from transformers import LlamaConfig

    smol = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    assert expected_params(smol, build_configs(("adapter",), {"adapter": a.to_dict()}))["adapter"] == 30 * (
        2 * 576 * 288 + 288 + 576
    )
    # the search drops the width that width_ratio makes moot, and the fixed fields
    cfg = composed("study=lora_vs_mam")
    arm = arms_of("mam")["mam"]
    assert [d.name for d in parse_space(cfg["search"], arm.components, dict(arm.fixed))] == [
        "adapter.lr",
        "adapter.dropout",
        "prefix.lr",
    ]


def test_train_peft_mam_runs_and_a_preset_twice_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["train", "model=tiny", "budget=smoke", "tracking=none", "peft=mam"], capsys)
    assert code == 0, out
    assert (
        "arm adapter+prefix" in out
        and f"trainable params  {2 * (2 * 64 * 32 + 32 + 64) + 2 * 2 * 30 * 32:,}" in out
    )
    code, _, err = run_cli(["train", "model=tiny", "peft=mam+adapter"], capsys)
    assert code == 2 and "error: peft='mam+adapter': a component is listed twice" in err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lora_vs_mam_study_runs_mam_with_its_fields_and_reports_them(workdir, capsys):
    args = ["study=lora_vs_mam", "model=tiny", "budget=smoke", "tracking=none", "study.n_trials=2"]
    args += ["study.seeds=1", "study.matched=false"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    studies = storage_studies("sqlite:///studies/lora_vs_mam.db")
    mam = studies["lora_vs_mam/mam"]
    assert mam.user_attrs["fixed"] == {
        "adapter": {"mode": "parallel", "placement": "ffn", "scaling": 4.0, "width_ratio": 0.5},
        "prefix": {"length": 30},
    }
    want = 2 * (2 * 64 * 32 + 32 + 64) + 2 * 2 * 30 * 32
    for t in mam.trials:
        assert set(t.params) == {"adapter.lr", "adapter.dropout", "prefix.lr"}
        assert t.user_attrs["metrics"]["trainable_params"] == want
    with open(workdir / "reports/lora_vs_mam/summary.csv") as f:
        rows = list(csv.DictReader(f))
    config = next(r["best_config"] for r in rows if r["arm"] == "mam")
    assert (
        "fixed adapter: mode=parallel, placement=ffn, scaling=4, width_ratio=0.5; prefix: length=30" in config
    )
    assert "fixed" not in next(r["best_config"] for r in rows if r["arm"] == "lora")
    # the study's question (MAM vs LoRA) is its primary comparison, though MAM holds no LoRA
    assert next(r["primary"] for r in rows if r["arm"] == "mam") in ("True", "1", "1.0")


def test_capacity_scaling_of_a_width_ratio_adapter_scales_the_ratio():
    from ablate.study.matching import scaled

    defaults = {"adapter": {"width": 16, "width_ratio": 0.5}, "prefix": {"length": 30}}
    assert scaled({"adapter": {"lr": 1e-3}}, defaults, 4) == {
        "adapter": {"lr": 1e-3, "width": 64, "width_ratio": 2.0},
        "prefix": {"length": 120},
    }
    assert scaled({}, {"adapter": {"width": 16, "width_ratio": 0.0}}, 2) == {"adapter": {"width": 32}}
