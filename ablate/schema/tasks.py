"""The keyword options of the built-in tasks (``data.task_options``): each option's default and
its check, declared here beside the rest of the config schema so that validating a config needs
no data code (``ablate.data.tasks`` generates the examples and reads its defaults from here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ablate.errors import ConfigError, require

#: Every accepted ``data.name``: a built-in task, user files, or a Hugging Face dataset.
Source = Literal["dates", "arithmetic", "json_extract", "sql", "sentiment", "file", "hf"]
SOURCES = get_args(Source)
#: Generated tasks shipped with ablate (kept in sync with ``ablate.data.tasks.TASKS`` by a test).
BUILTIN_TASKS = SOURCES[:5]


@dataclass(frozen=True)
class Option:
    """One keyword option of a task: its default and a check that returns the normalised value.

    ``parse`` raises ``ValueError(reason)`` on a bad value; the reason ends up in the
    one-line ``ConfigError`` keyed ``data.task_options.<name>``.
    """

    default: Any
    parse: Callable[[Any], Any]


MAX_DIGITS = 9


def _digits(x: Any) -> list[int]:
    ok = isinstance(x, Sequence) and not isinstance(x, str) and len(x) == 2
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) for n in x)
    if not ok or not 1 <= x[0] <= x[1] <= MAX_DIGITS:
        raise ValueError(
            f"must be [low, high] operand digits, integers with 1 <= low <= high <= {MAX_DIGITS}"
        )
    return [int(x[0]), int(x[1])]


def _ops(x: Any) -> str:
    if not isinstance(x, str) or not x or set(x) - set("+-") or len(set(x)) != len(x):
        raise ValueError('must be "+", "-" or "+-" (the operations to draw from)')
    return "".join(op for op in "+-" if op in x)  # "-+" and "+-" are the same task


MAX_CONDITIONS = 2


def _conditions(x: Any) -> list[int]:
    ok = isinstance(x, Sequence) and not isinstance(x, str) and len(x) == 2
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) for n in x)
    if not ok or not 0 <= x[0] <= x[1] <= MAX_CONDITIONS:
        raise ValueError(
            f"must be [low, high] WHERE conditions, integers with 0 <= low <= high <= {MAX_CONDITIONS}"
        )
    return [int(x[0]), int(x[1])]


def _flag(x: Any) -> bool:
    if not isinstance(x, bool):
        raise ValueError("must be true or false")
    return x


#: name -> option -> spec, for the tasks that take options; the defaults are the generator's.
OPTIONS: dict[str, dict[str, Option]] = {
    "arithmetic": {"digits": Option([2, 4], _digits), "ops": Option("+-", _ops)},
    "sql": {"conditions": Option([0, 2], _conditions), "aggregates": Option(True, _flag)},
    "sentiment": {"negation": Option(True, _flag)},
}


def parse_options(name: str, given: Any) -> dict[str, Any]:
    """Validate and normalise the ``data.task_options`` of task ``name`` (only the given keys).

    Raises ``ConfigError`` keyed ``data.task_options.<option>`` for an unknown
    option or a bad value, or ``data.task_options`` if it is not a mapping.
    """
    if given is None:
        return {}
    require(isinstance(given, Mapping), "data.task_options", given, "must be a mapping of option: value")
    specs = OPTIONS.get(name, {})
    out: dict[str, Any] = {}
    for key, value in given.items():
        known = f"known: {sorted(specs)}" if specs else "it takes none"
        if name not in BUILTIN_TASKS:
            known = "only built-in tasks take options"
        require(key in specs, f"data.task_options.{key}", value, f"unknown option for data={name}; {known}")
        try:
            out[str(key)] = specs[key].parse(value)
        except ValueError as e:
            raise ConfigError(f"data.task_options.{key}", value, str(e)) from e
    return out
