"""Typed config objects built from the composed Hydra config.

Hydra composes plain dicts; ``TrialConfig.from_dict`` turns them into
validated dataclasses, so every user mistake surfaces here as a one-line
``ConfigError`` naming the key and value, before anything is loaded or
recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.components import ComponentConfig, arm_name, build_configs, parse_arm
from ablate.components.quant import QuantConfig
from ablate.data import DataConfig
from ablate.errors import ConfigError, require
from ablate.models import ModelConfig
from ablate.train import TrainConfig

__all__ = ["ConfigError", "EvalConfig", "TrackingConfig", "TrialConfig"]


@dataclass
class EvalConfig:
    knockout: bool = True  # test metric with each component switched off (which part does the work?)
    zero_shot: bool = False  # test metric of the bare base model, i.e. every component off
    save_components: bool = True  # log the trained components' weights as an MLflow artifact

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        for key, value in data.items():
            require(key in cls.__dataclass_fields__, f"eval.{key}", value, "unknown field")
            require(isinstance(value, bool), f"eval.{key}", value, "must be true or false")
        return cls(**data)


@dataclass
class TrackingConfig:
    backend: str = "mlflow"  # mlflow | none
    uri: str = "sqlite:///mlflow.db"  # MLflow 3's default local store; `mlflow ui` finds it here
    experiment: str = "ablate-train"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackingConfig:
        for key, value in data.items():
            require(key in cls.__dataclass_fields__, f"tracking.{key}", value, "unknown field")
        cfg = cls(**data)
        require(cfg.backend in ("mlflow", "none"), "tracking.backend", cfg.backend, "must be mlflow or none")
        if cfg.uri.startswith("sqlite:///") and not cfg.uri.startswith("sqlite:////"):
            # Pin a relative SQLite store to this directory: MLflow caches its database engine per
            # URI string, so a relative URI would follow whichever directory was current first.
            cfg.uri = "sqlite:///" + str(Path(cfg.uri.removeprefix("sqlite:///")).resolve())
        require(bool(cfg.experiment), "tracking.experiment", cfg.experiment, "must not be empty")
        return cfg


@dataclass
class TrialConfig:
    arm: tuple[str, ...]
    peft: dict[str, ComponentConfig]
    model: ModelConfig
    quant: QuantConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def arm_name(self) -> str:
        return arm_name(self.arm)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> TrialConfig:
        """From a resolved, plain config dict (``OmegaConf.to_container(cfg, resolve=True)``)."""
        peft = cfg.get("peft") or {}
        if not isinstance(peft, Mapping):
            raise ConfigError("peft", peft, "select components as peft=lora+adapter")
        names = parse_arm(list(peft))
        train = TrainConfig.from_dict(cfg.get("train") or {})
        quant = QuantConfig.from_dict(cfg.get("quant") or {})
        if train.precision == "fp32" and quant.compute_dtype == "auto":
            # A 4-bit base's auto compute dtype (and its other weights' dtype) follows the hardware,
            # bf16 where native; a run asked to train in fp32 gets an fp32 base throughout.
            quant.compute_dtype = "float32"
        return cls(
            arm=names,
            peft=build_configs(names, peft),
            model=ModelConfig.from_dict(cfg.get("model") or {}),
            quant=quant,
            data=DataConfig.from_dict(cfg.get("data") or {}),
            train=train,
            eval=EvalConfig.from_dict(cfg.get("eval") or {}),
            tracking=TrackingConfig.from_dict(cfg.get("tracking") or {}),
        )
