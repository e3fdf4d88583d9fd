"""Components on a model: attach them to a frozen base in canonical order, knock them out, save
and load only their weights, detach them. Each component's torch side is its ``layers.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from torch import nn

from ablate.components import COMPONENTS, ComponentConfig, build_configs, parse_arm
from ablate.components._arch import Dims, dims
from ablate.components.base import Attached

#: each component's torch side, ``ablate.components.<name>.layers``, in canonical order
LAYERS: dict[str, ModuleType] = {
    n: importlib.import_module(f"ablate.components.{n}.layers") for n in COMPONENTS
}


def expected_params(config, cfgs: Mapping[str, ComponentConfig]) -> dict[str, int]:
    """Closed-form trainable-parameter count of each component, from the model config alone."""
    d: Dims = dims(config)
    return {n: LAYERS[n].expected_params(d, c) for n, c in cfgs.items()}


class Stack:
    """The components attached to one model, in canonical order."""

    def __init__(self, model: nn.Module, attached: list[Attached]) -> None:
        self.model = model
        self.attached = attached

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attached)

    def __iter__(self) -> Iterator[Attached]:
        return iter(self.attached)

    def __getitem__(self, name: str) -> Attached:
        for a in self.attached:
            if a.name == name:
                return a
        raise KeyError(name)

    def num_parameters(self) -> dict[str, int]:
        return {a.name: a.num_parameters() for a in self.attached}

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per component, each with its own learning rate."""
        return [
            {"name": a.name, "params": a.parameters(), "lr": a.cfg.lr, "weight_decay": a.cfg.weight_decay}
            for a in self.attached
        ]

    @contextmanager
    def knocked_out(self, names: tuple[str, ...] | list[str]):
        """Switch the named components off (evaluation-time ablation), then back on."""
        chosen = [a for a in self.attached if a.name in names]
        for a in chosen:
            a.set_enabled(False)
        try:
            yield self
        finally:
            for a in chosen:
                a.set_enabled(True)

    def reset_gates(self) -> None:
        for a in self.attached:
            a.reset_gates()

    def gate_metrics(self) -> dict[str, float]:
        """``gate/<component>/<layer>``: mean gate value per layer of every gated component, over the
        evaluations since ``reset_gates`` (empty when nothing is gated)."""
        return {
            f"gate/{a.name}/{layer:02d}": mean
            for a in self.attached
            for layer, mean in a.gate_means().items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {a.name: a.state_dict() for a in self.attached}

    def load_state_dict(self, state: Mapping[str, Mapping]) -> None:
        for a in self.attached:
            a.load_state_dict(state[a.name])

    def detach(self) -> None:
        for a in reversed(self.attached):
            a.detach()
        self.attached = []


def attach(model: nn.Module, cfgs: Mapping[str, ComponentConfig], max_length: int | None = None) -> Stack:
    """Attach the components to a frozen base in canonical order; returns their ``Stack``."""
    context = dims(model.config).context
    attached: list[Attached] = []
    try:
        for name in LAYERS:
            if name not in cfgs:
                continue
            if max_length is not None:
                cfgs[name].check_context(context, max_length)
            attached.append(LAYERS[name].apply(model, cfgs[name]))
    except BaseException:
        Stack(model, attached).detach()  # leave the shared base exactly as we found it
        raise
    return Stack(model, attached)


def save(stack: Stack, directory) -> None:
    """Write only the components' weights (safetensors) and their configs (JSON)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{comp}/{pname}": t.contiguous()
        for comp, sd in stack.state_dict().items()
        for pname, t in sd.items()
    }
    save_file(tensors, str(directory / "components.safetensors"))
    meta = {a.name: a.cfg.to_dict() for a in stack}
    (directory / "components.json").write_text(json.dumps(meta, indent=2))


def load(model: nn.Module, directory, max_length: int | None = None) -> Stack:
    """Attach the saved components to ``model`` and load their weights."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / "components.json").read_text())
    stack = attach(model, build_configs(parse_arm(list(meta)), meta), max_length)
    flat = load_file(str(directory / "components.safetensors"))
    state: dict[str, dict] = {name: {} for name in meta}
    for key, tensor in flat.items():
        comp, pname = key.split("/", 1)
        state[comp][pname] = tensor
    stack.load_state_dict(state)
    return stack
