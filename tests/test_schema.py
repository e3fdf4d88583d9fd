"""The one config schema: messages of refused values, its agreement with conf/, the help built
from it, the one component list, and validation without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate import help as ablate_help
from ablate.cli import COMMANDS, CONF
from ablate.components import BASE, COMPONENTS, CONFIGS
from ablate.errors import ConfigError
from ablate.schema import (
    Config,
    DataConfig,
    ExportConfig,
    Heartbeat,
    Schema,
    StudyConfig,
    TrainConfig,
    TrialConfig,
)

ROOT = Path(__file__).resolve().parents[1]

# (schema, data, the exact message): one line each, ``key=value: reason``
REFUSED = [
    (TrainConfig, {"steps": -5}, "train.steps=-5: must be an integer > 0"),
    (TrainConfig, {"steps": 2.5}, "train.steps=2.5: must be an integer > 0"),
    (TrainConfig, {"steps": "5"}, "train.steps='5': must be an integer > 0"),
    (TrainConfig, {"progress": 1}, "train.progress=1: must be true or false"),
    (TrainConfig, {"warmup_ratio": 1.0}, "train.warmup_ratio=1.0: must be in [0, 1)"),
    (TrainConfig, {"max_grad_norm": -1}, "train.max_grad_norm=-1: must be a number >= 0"),
    (TrainConfig, {"precision": "fp8"}, "train.precision='fp8': must be one of auto, fp32, bf16"),
    (TrainConfig, {"stepz": 5}, "train.stepz=5: unknown field (did you mean steps?)"),
    (TrainConfig, {"fault": {"nan_at_step": 0}}, "train.fault.nan_at_step=0: must be a step >= 1 or null"),
    (TrainConfig, {"fault": {"oom_times": -1}}, "train.fault.oom_times=-1: must be an integer >= 0"),
    (
        TrainConfig,
        {"fault": {"bogus": 1}},
        "train.fault.bogus=1: unknown field (known: nan_at_step, oom_at_step, oom_times, step_delay_s, trials)",
    ),  # fmt: skip
    (
        TrainConfig,
        {"fault": {"trials": ["x"]}},
        "train.fault.trials=['x']: a list of trial numbers >= 0, or null",
    ),
    (CONFIGS["lora"], {"r": 0}, "peft.lora.r=0: must be an integer > 0"),
    (CONFIGS["lora"], {"dropout": 1}, "peft.lora.dropout=1: must be a number >= 0 and < 1"),
    (
        CONFIGS["lora"],
        {"targets": "bogus"},
        "peft.lora.targets='bogus': must be one of attention, mlp, all-linear or a list of module names",
    ),  # fmt: skip
    (CONFIGS["lora"], {"gate": True, "dora": True}, "peft.lora.gate=True: cannot be combined with dora"),
    (
        CONFIGS["adapter"],
        {"mode": "diagonal"},
        "peft.adapter.mode='diagonal': must be one of serial, parallel",
    ),
    (CONFIGS["prefix"], {"lenght": 8}, "peft.prefix.lenght=8: unknown field (did you mean length?)"),
    (CONFIGS["prompt"], {"init": "zeros"}, "peft.prompt.init='zeros': must be one of vocab, random"),
    (DataConfig, {"n_train": 0}, "data.n_train=0: must be an integer > 0 or null"),
    (DataConfig, {"name": "dates", "n_test": None}, "data.n_test=None: task dates needs a count"),
    (
        DataConfig,
        {"format": "xml", "name": "file", "path": "x"},
        "data.format='xml': must be one of jsonl, csv, parquet or null",
    ),  # fmt: skip
    (StudyConfig, {"arms": ["lora"]}, "study=None: select a study: ablate study=NAME"),
    (StudyConfig, {"name": "s", "arms": []}, "study.arms=[]: must be a non-empty list"),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "sesoi": 2},
        "study.sesoi=2: must be a number in (0, 1): a difference in test EM as a fraction (0.02 = 2 points)",
    ),  # fmt: skip
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "capacity_levels": [1, 1]},
        "study.capacity_levels=[1, 1]: a level is listed twice",
    ),  # fmt: skip
    (
        Heartbeat,
        {"interval_s": 30, "grace_s": 30},
        "heartbeat.grace_s=30: must exceed heartbeat.interval_s=30, or live workers are reaped",
    ),  # fmt: skip
    (ExportConfig, {"seed": "best"}, "seed='best': must be an integer (a replicate seed)"),
    (ExportConfig, {}, "out=None: where to write, e.g. out=exports/winner"),
    (Config, {"workers": 0}, "workers=0: must be an integer from 1 to 256"),
    (
        TrialConfig,
        {"peft": {"lora": {}, "bogus": {}}},
        f"peft='bogus': unknown component (known: {', '.join(COMPONENTS)})",
    ),  # fmt: skip
    (TrialConfig, {"peft": {"lora": {"r": -1}}}, "peft.lora.r=-1: must be an integer > 0"),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "seeds": "many"},
        "study.seeds='many': must be an integer > 0 or auto (group-sequential looks)",
    ),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "looks": [3, 3, 5]},
        "study.looks=[3, 3, 5]: a list of increasing seed counts, the first at least 3",
    ),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "search_repeats": 2},
        "study.search_repeats=2: 2 searches give an interval with one degree of freedom and no verdict: "
        "use 1, or 3 or more",
    ),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "search_repeats": 3, "seeds": "auto"},
        "study.search_repeats=3: not with study.seeds=auto (the looks spend seeds, not searches): "
        "give study.seeds a number",
    ),
    (
        StudyConfig,
        {"name": "s", "arms": ["lora"], "spending": "linear"},
        "study.spending='linear': must be one of obf, pocock",
    ),
    (
        TrialConfig,
        {"peft": {"lora": {}}, "train": {"eval_every": 0}},
        "train.eval_every=0: must be an integer > 0",
    ),
]


@pytest.mark.parametrize("schema,data,message", REFUSED, ids=[m.split(":")[0] for *_, m in REFUSED])
def test_a_refused_value_is_one_line_naming_key_and_value(schema, data, message):
    with pytest.raises(ConfigError) as err:
        schema.from_dict(data)
    assert str(err.value) == message


def _composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["peft=[" + ",".join(COMPONENTS) + "]", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def _schemas(cfg: dict) -> list[tuple[str, type[Schema], dict]]:
    groups = {"train": TrainConfig, "data": DataConfig, "study": StudyConfig, "heartbeat": Heartbeat}
    out = [(f"peft.{n}", c, cfg["peft"][n]) for n, c in CONFIGS.items()]
    return out + [(k, s, cfg[k]) for k, s in groups.items() if k in cfg]


@pytest.mark.parametrize("study", sorted(p.stem for p in (CONF / "study").glob("*.yaml")))
def test_every_composed_config_is_valid_and_every_field_has_help(study):
    cfg = _composed(f"study={study}")
    Config.from_dict(cfg)
    TrialConfig.from_dict(cfg)
    StudyConfig.from_dict(cfg["study"])
    for key, schema, values in _schemas(cfg):
        assert set(values) <= set(schema.model_fields), key  # conf/ spells no field the schema lacks
        for name, info in schema.model_fields.items():
            assert info.description, f"{key}.{name} has no help line"


def test_every_component_is_one_folder_that_registers_itself():
    """A component is its folder (fields torch-free in ``__init__``, torch side in ``layers.py``) and
    its conf files; the registry finds every folder, so nothing else lists components."""
    import importlib

    folders = sorted(p.parent.name for p in (ROOT / "ablate" / "components").glob("*/__init__.py"))
    assert sorted(COMPONENTS) == folders
    assert [CONFIGS[n].order for n in COMPONENTS] == sorted(CONFIGS[n].order for n in COMPONENTS)
    assert [n for n in COMPONENTS if CONFIGS[n].base] == [BASE] == [COMPONENTS[0]]
    for name, cls in CONFIGS.items():
        assert cls.__module__ == f"ablate.components.{name}" and f"peft.{name}" == cls.KEY
        assert cls.capacity is None or cls.capacity in cls.model_fields, name
        assert not cls.uses_context or "length" in cls.model_fields, name
        assert cls.test_lr > 0
        layers = importlib.import_module(f"ablate.components.{name}.layers")
        assert callable(layers.apply) and callable(layers.expected_params), name
        # its defaults, whose defaults list pulls in its search space (conf/search/<name>.yaml)
        peft_yaml = (CONF / "peft" / f"{name}.yaml").read_text()
        assert f"- /search/{name} " in peft_yaml and (CONF / "search" / f"{name}.yaml").exists(), name
    composed = _composed()
    assert set(composed["search"]) == set(COMPONENTS) == set(composed["peft"])
    assert TrialConfig.from_dict({"peft": {n: {} for n in reversed(COMPONENTS)}}).arm == COMPONENTS


def test_from_dict_is_written_once():
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in (ROOT / "ablate").rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.match(r"\s*def from_dict\b", line)
    ]
    assert found == ["ablate/fields.py:" + found[0].rsplit(":", 1)[1]], found


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_lists_every_command_with_an_example(command):
    cfg = _composed("study=lora_vs_adapter", "model=tiny")
    text = ablate_help.render(command, CONF, cfg)
    assert "cli is powered by Hydra" not in text
    assert set(ablate_help.COMMANDS) == set(COMMANDS)
    for name, (_, example) in ablate_help.COMMANDS.items():
        assert f"ablate {name}" in text and example in text and example.startswith("ablate ")
    assert f"{', '.join(COMPONENTS)}; presets: mam, unipelt" in text
    if command == "train":  # every field of the trial's groups, with its composed value and help
        assert "train.steps=60" in text and "optimizer steps" in text
        assert "peft.prefix.length=" in text and "model.source=tiny" in text
    if command == "study":
        for study in (CONF / "study").glob("*.yaml"):
            assert f"  {study.stem} " in text
        assert "study.n_trials=null" in text and "study.trials_per_field=1.5" in text and "workers=1" in text


def test_the_schema_plan_and_help_import_no_torch():
    code = (
        "import sys, ablate.components, ablate.schema, ablate.study.plan, ablate.help, ablate.cli;"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'optuna', 'mlflow', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
