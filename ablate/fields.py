"""The schema machinery: one base model, one ``from_dict``, one error shape.

pydantic rather than Hydra structured configs: Hydra's dataclass schemas check types
only (no ranges, no choices, no cross-field rules) and they would bind validation to
composition, while ``ablate report`` and the exporters validate recorded plain dicts
that never pass through Hydra. pydantic (already installed with MLflow, and free of
torch) checks types, ranges and choices declaratively, and a field's ``description`` is
its one-line help. Every ``pydantic.ValidationError`` is turned into the project's
``ConfigError`` here, so users still see ``key=value: reason`` on one line, exit 2.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

import annotated_types
import pydantic
from pydantic import BaseModel, ConfigDict

from ablate.errors import ConfigError


def field(default: Any = None, help: str = "", *, reason: str | None = None, **constraints: Any) -> Any:
    """A schema field: its default, its one-line ``help``, pydantic constraints (``gt``, ``ge``, ``lt``,
    ``le``...), and optionally the ``reason`` a bad value is refused with (else it is written from the
    field's type and constraints: ``must be an integer > 0``)."""
    extra = {"reason": reason} if reason else None
    if isinstance(default, (dict, list)):
        made = default
        return pydantic.Field(default_factory=lambda: type(made)(made), description=help,
                              json_schema_extra=extra, **constraints)  # fmt: skip
    return pydantic.Field(default, description=help, json_schema_extra=extra, **constraints)


class Schema(BaseModel):
    """A validated config group. ``KEY`` is its dotted place in the composed config (``train``,
    ``peft.lora``), which every error names. Values are strict: ``steps: "5"`` or ``knockout: 1`` is
    a mistake, not something to coerce. Instances may be changed after validation by our own code
    (``cfg.eval.knockout = False`` for a search trial); that is not revalidated."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)
    KEY: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, key: str | None = None) -> Self:
        """Validate a plain mapping (``OmegaConf.to_container(cfg, resolve=True)`` or a recorded
        config); any mistake raises ``ConfigError`` naming the full key and the value."""
        key = cls.KEY if key is None else key
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(key, data, f"must be a mapping of {cls.__name__} fields")
        try:
            return cls.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            raise to_config_error(cls, key, exc, data) from None

    def key(self, name: str) -> str:
        return f"{self.KEY}.{name}" if self.KEY else name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def to_config_error(
    model: type[BaseModel], prefix: str, exc: pydantic.ValidationError, data: Any
) -> ConfigError:
    """The first error of validating ``data`` as ``ConfigError(full.key, value, reason)``; the value
    is the whole field as the user wrote it, not the list item or union member that failed."""
    err = exc.errors()[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):  # raised by a validator of ours: already in shape
        return original
    names: list[str] = []
    owner: Any = model
    info = None
    for part in err["loc"]:  # field names, then what pydantic adds (a list index, a union member)
        fields = owner.model_fields if owner is not None else {}
        if isinstance(part, str) and part in fields:
            names.append(part)
            info = fields[part]
            owner = _model_of(info.annotation)
        else:
            if err["type"] == "extra_forbidden" and isinstance(part, str):
                key = ".".join([prefix, *names, part] if prefix else [*names, part])
                return ConfigError(key, err["input"], unknown_reason(part, list(fields)))
            break
    key = ".".join([prefix, *names] if prefix else names)
    value = _value(data, names, err)
    if original is not None:  # a ValueError of a validator: its text is the reason
        return ConfigError(key, value, str(original))
    return ConfigError(key, value, describe(info) if info is not None else err["msg"])


def unknown_reason(name: str, known: list[str], what: str = "field") -> str:
    """``unknown field (did you mean steps?)``, or the known names when none is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown {what} (did you mean {close[0]}?)"
    return f"unknown {what} (known: {', '.join(known)})"


def describe(info: Any) -> str:
    """What a field accepts, in words: ``must be an integer > 0``, ``must be one of a, b``."""
    extra = info.json_schema_extra or {}
    if isinstance(extra, dict) and extra.get("reason"):
        return str(extra["reason"])
    annotation, optional = _strip_none(info.annotation)
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                bounds.append(f"{sign} {getattr(meta, attr)}")
    if typing.get_origin(annotation) is Literal:
        text = "must be one of " + ", ".join(str(c) for c in typing.get_args(annotation))
    else:
        word = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        text = "must be " + word.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")
        if bounds:
            text += " " + " and ".join(bounds)
    return text + (" or null" if optional else "")


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def _model_of(annotation: Any) -> Any:
    annotation, _ = _strip_none(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _value(data: Any, names: list[str], err: dict[str, Any]) -> Any:
    value = data
    for name in names:
        if not isinstance(value, Mapping):
            return err["input"]
        if name not in value:  # a required field left out
            return None
        value = value[name]
    return value
