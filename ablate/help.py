"""``ablate --help`` and ``ablate COMMAND --help``: what ablate does, its commands with an example
each, the config groups and their options, and every field with its current value and the
schema's one-line help.

Written here rather than as Hydra's ``hydra.help.template``: the template can only paste Hydra's
alphabetical group listing and the raw config, so it could neither list the components in their
canonical order nor give a field its help line. ``--hydra-help`` still shows Hydra's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablate.components import COMPONENTS, CONFIGS
from ablate.schema import (
    Config,
    DataConfig,
    EvalConfig,
    ExportConfig,
    Heartbeat,
    ModelConfig,
    QuantConfig,
    Schema,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
)

ABOUT = """\
ablate: does combining LoRA with another parameter-efficient method pay off?
It trains QLoRA+X fine-tunes (X: a bottleneck adapter, prefix tuning, prompt tuning) and
compares each with a well-tuned LoRA-only baseline and a parameter-matched LoRA, on test exact
match (with confidence intervals), trainable parameters, speed and memory. Hydra composes the
config, Optuna searches every arm, MLflow records every run, and a report states the verdict."""

#: command -> (what it does, one example); the CLI's command list is this table's keys
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("one trial of one arm, recorded as one MLflow run", "ablate train peft=lora+adapter quant=nf4"),
    "study": (
        "search every arm, match, replicate and report (resumable; ablate study=NAME alone works)",
        "ablate study=lora_vs_adapter workers=2",
    ),
    "worker": (
        "one more worker process on a study's shared storage (another host, a SLURM task)",
        "ablate worker study=lora_vs_adapter study.storage=postgresql://host/db",
    ),
    "report": ("rebuild reports/NAME/ from what a study recorded", "ablate report study=lora_vs_adapter"),
    "export": (
        "the winning arm's trained components, loadable with peft (LoRA) or ablate.load",
        "ablate export study=lora_vs_adapter out=exports/winner",
    ),
    "bundle": (
        "one .tar.gz a reviewer can re-check: the study's storage, plan, versions, data hashes and report",
        "ablate bundle study=lora_vs_adapter out=lora_vs_adapter.tar.gz  (then: ablate report bundle=FILE)",
    ),
    "compare": (
        "the verdict on per-item results made elsewhere (lm-eval --log_samples, or arm/seed/item/score tables)",
        "ablate compare lm_eval=runs/ metric=exact_match baseline=lora",
    ),
}

#: the groups each command reads, with their schema (a component's fields: ``peft.<name>``)
_TRIAL = {"model": ModelConfig, "quant": QuantConfig, "data": DataConfig, "train": TrainConfig,
          "eval": EvalConfig, "tracking": TrackingConfig}  # fmt: skip
_STUDY = {"study": StudyConfig, "heartbeat": Heartbeat}


def render(command: str | None, conf: Path, composed: Mapping[str, Any] | None) -> str:
    """The help of ``command`` (None: ``ablate --help``); ``composed`` supplies current values."""
    out = [ABOUT, "", "Commands:"]
    for name, (what, example) in COMMANDS.items():
        out += [f"  ablate {name:<8} {what}", f"      {example}"]
    out += ["  ablate COMMAND --help    this help with that command's fields", ""]
    out += ["Groups (group=option; the default first):"] + _groups(conf)
    out += ["", "Components (peft=lora+adapter, in the order they attach):"]
    out += [f"  {', '.join(COMPONENTS)}; presets: {', '.join(_presets(conf))}"]
    if command in ("study", "worker", "report", "export"):
        out += ["", "Studies (study=NAME):"] + _studies(conf)
    groups = _fields_of(command)
    if groups:
        out += ["", "Fields (key=value, shown with their current value):"]
        if "heartbeat" in groups:  # a study's one top-level field
            workers = Config.model_fields["workers"]
            out.append(_line("workers", (composed or {}).get("workers", 1), workers.description))
        for key, schema in groups.items():
            out += _fields(key, schema, _at(composed or {}, key))
    out += ["", "Show the composed config: ablate ARGS --cfg job.  Hydra's own flags: ablate --hydra-help"]
    return "\n".join(out)


def _fields_of(command: str | None) -> dict[str, type[Schema]]:
    if command is None:
        return {}
    if command == "export":
        return {"export": ExportConfig}
    if command == "report":
        return {"study": StudyConfig}
    peft = {f"peft.{n}": c for n, c in CONFIGS.items()}
    if command == "train":
        return {**_TRIAL, **peft}
    return {**_STUDY, **_TRIAL, **peft}


def _fields(key: str, schema: type[Schema], values: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, info in schema.model_fields.items():
        default = info.get_default(call_default_factory=True) if not info.is_required() else "(required)"
        value = values.get(name, default) if isinstance(values, Mapping) else default
        nested = info.annotation if isinstance(info.annotation, type) else None
        if nested is not None and issubclass(nested, Schema):
            lines += _fields(f"{key}.{name}", nested, value if isinstance(value, Mapping) else {})
        else:
            lines.append(_line(f"{key}.{name}", value, info.description))
    return lines


def _at(data: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    for part in dotted.split("."):
        data = data.get(part) or {} if isinstance(data, Mapping) else {}
    return data


def _line(key: str, value: Any, help: str | None) -> str:
    if value is None:
        value = "null"
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"  {f'{key}={value}':<40} {help or ''}".rstrip()


def _options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def _presets(conf: Path) -> list[str]:
    return [n for n in _options(conf, "peft") if n not in COMPONENTS]


def _groups(conf: Path) -> list[str]:
    import yaml

    defaults = yaml.safe_load((conf / "config.yaml").read_text()).get("defaults", [])
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
    lines = []
    for group in sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"):
        if group == "peft":
            continue  # listed below, in the components' order
        options = _options(conf, group)
        first = chosen.get(group)
        if isinstance(first, str) and first in options:
            options = [first] + [o for o in options if o != first]
        lines.append(f"  {group}: {', '.join(options)}")
    return lines


def _studies(conf: Path) -> list[str]:
    import yaml

    lines = []
    for name in _options(conf, "study"):
        data = yaml.safe_load((conf / "study" / f"{name}.yaml").read_text()) or {}
        lines.append(f"  {name:<18} {(data.get('study') or {}).get('description', '')}".rstrip())
    return lines
