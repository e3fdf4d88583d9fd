"""Trial configurations of an arm, and the one base they run on in this worker.

One base is loaded at a time: switching an arm's quantisation frees the other
base first, so an arm's peak memory never includes another arm's base. The
base's own weight bytes (parameters + buffers) are recorded apart from the
training peak as ``base_bytes``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Mapping
from typing import Any

from ablate.components import stack as components
from ablate.errors import ConfigError
from ablate.schema import StudyConfig, TrialConfig
from ablate.search import Dist
from ablate.study.config import Arm
from ablate.study.matching import scaled
from ablate.study.plan import arm_defaults, trial_config


class Bench:
    def __init__(self, plain: Mapping[str, Any], spec: StudyConfig) -> None:
        self.plain = copy.deepcopy(dict(plain))
        self.spec = spec
        self.loaded: tuple[str, Any] | None = None  # (quant method, Base)
        self.base_bytes = 0
        self.splits: Any = None  # tokenized once; every arm uses the same data

    def defaults(self, arm: Arm) -> dict[str, dict[str, Any]]:
        return arm_defaults(self.plain, arm)

    def config(self, arm: Arm, values: Mapping[str, Mapping[str, Any]], **run: Any) -> TrialConfig:
        """``plan.trial_config`` on this worker's plan (``seed``, ``run``, ``evals``)."""
        return trial_config(self.plain, self.spec, arm, values, **run)

    def base(self, trial: TrialConfig) -> Any:
        """This trial's base, loading it (and freeing any other) when its quantisation differs."""
        from ablate.models import load_base, weight_bytes

        method = trial.quant.method
        if self.loaded is None or self.loaded[0] != method:
            self.release()
            base = load_base(trial.model, trial.quant)
            self.base_bytes = weight_bytes(base.model)["total"]  # 4-bit block scales included
            self.loaded = (method, base)
            _trim_heap()  # what loading (and quantising) left behind is not the trials' memory
        return self.loaded[1]

    def release(self) -> None:
        if self.loaded is None:
            return
        self.loaded = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _trim_heap()

    def encoded(self, trial: TrialConfig) -> Any:
        from ablate.run import prepare_data

        if self.splits is None:
            self.splits = prepare_data(trial.data, self.base(trial).tokenizer)
        return self.splits

    def check_extremes(self, arms: list[Arm], spaces: Mapping[str, list[Dist]]) -> None:
        """Attach every arm at the high end of its ranges once (and, with capacity levels, at that
        end scaled by the largest level): a bad range fails now, not mid-study. Arms are visited
        grouped by quantisation, so each base is loaded once here."""
        levels = self.spec.capacity_levels or [1]
        for arm in sorted(arms, key=lambda a: a.quant != (self.loaded or ("none",))[0]):
            high: dict[str, dict[str, Any]] = {}
            for d in spaces[arm.name]:
                if d.kind != "categorical":
                    high.setdefault(d.component, {})[d.field] = int(d.high) if d.kind == "int" else d.high
            self._attach(arm, high)
            if max(levels) > 1:
                self._attach(arm, scaled(high, self.defaults(arm), max(levels)), capacity=True)

    def _attach(self, arm: Arm, values: dict[str, dict[str, Any]], capacity: bool = False) -> None:
        try:  # the schema (a range's end out of a field's bounds) or the attach itself may refuse
            trial = self.config(arm, values)
            base = self.base(trial)
            components.attach(base.model, trial.peft, trial.data.max_length).detach()
        except ConfigError as err:  # name the setting that reaches the bad value
            comp, _, fname = err.key.removeprefix("peft.").partition(".")
            if capacity:
                levels = self.spec.capacity_levels or [1]
                why = f"x{max(levels)} gives {err.key}={err.value}: {err.reason}"
                raise ConfigError("study.capacity_levels", levels, why) from None
            if fname in values.get(comp, {}):
                raise ConfigError(f"search.{comp}.{fname}.high", err.value, err.reason) from None
            raise

    def model_config(self, arm: Arm) -> Any:
        """The transformers config of the base (closed-form parameter counts read it)."""
        return self.base(self.config(arm, {})).model.config


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so that a CPU trial's
    peak RSS does not carry the previous base."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        ctypes.CDLL(name).malloc_trim(0)
