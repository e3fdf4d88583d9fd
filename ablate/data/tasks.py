"""Built-in generated tasks: offline, deterministic, and checkable by exact match.

A task is one function ``rng -> Example`` plus one line in ``TASKS``. The
prompts are short on purpose: the default model is SmolLM2-135M on a laptop
CPU, so each example stays under ~40 tokens before the chat template.

A task may take keyword options (``data.task_options``, e.g. the operand
digits of ``arithmetic``), declared once in ``ablate.schema.tasks.OPTIONS`` with a
default and a check, beside the rest of the config schema (torch-free, no data).

Splits are drawn from independent seeded streams, test first, and a prompt
already used by an earlier split is redrawn, so the splits are disjoint and
the test set does not move when ``n_train`` changes. Options that differ from
their defaults are part of each stream's seed, so with default options a task
draws exactly the examples it drew before options existed.
"""

from __future__ import annotations

import calendar
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ablate.data.config import Example
from ablate.errors import ConfigError
from ablate.schema.tasks import OPTIONS, parse_options

Task = Callable[..., Example]  # (rng, **options) -> Example

MONTHS = list(calendar.month_name)[1:]
# fmt: off
NAMES = (
    "Alice", "Bob", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Will", "Xena", "Yusuf", "Zoe",
)
CITIES = (
    "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Oslo", "Dublin", "Athens",
    "Warsaw", "Tokyo", "Lima", "Cairo", "Nairobi", "Sydney", "Toronto", "Boston", "Denver",
    "Seoul",
)
# fmt: on


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Only surface forms whose day and month cannot be confused (no 03/05/2021).
_DATE_FORMS: tuple[Callable[[int, int, int], str], ...] = (
    lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"{MONTHS[m - 1][:3]} {d} {y}",
    lambda y, m, d: f"the {_ordinal(d)} of {MONTHS[m - 1]}, {y}",
    lambda y, m, d: f"{y}/{m:02d}/{d:02d}",
    lambda y, m, d: f"{d}-{MONTHS[m - 1][:3]}-{y}",
    lambda y, m, d: f"{MONTHS[m - 1]} {_ordinal(d)} {y}",
)


def dates(rng: random.Random) -> Example:
    """Normalise a date written in one of several unambiguous forms to ISO 8601."""
    y, m = rng.randint(1950, 2049), rng.randint(1, 12)
    d = rng.randint(1, calendar.monthrange(y, m)[1])
    form = rng.choice(_DATE_FORMS)
    return Example(f"Convert to YYYY-MM-DD: {form(y, m, d)}", f"{y:04d}-{m:02d}-{d:02d}")


def _number(rng: random.Random, low: int, high: int) -> int:
    n = rng.randint(low, high)  # digits
    return rng.randint(10 ** (n - 1), 10**n - 1)


def arithmetic(rng: random.Random, *, digits: Sequence[int] = (2, 4), ops: str = "+-") -> Example:
    """Add or subtract two numbers of ``digits`` (low, high) digits; subtraction never goes negative.

    Each operand's digit count is drawn uniformly from the range, then the number
    uniformly among those with that many digits; ``ops`` is ``"+-"``, ``"+"`` or ``"-"``.
    """
    a, b = _number(rng, digits[0], digits[1]), _number(rng, digits[0], digits[1])
    op = ops if len(ops) == 1 else ("+" if rng.random() < 0.5 else "-")
    if op == "+":
        return Example(f"What is {a} + {b}?", str(a + b))
    a, b = max(a, b), min(a, b)
    return Example(f"What is {a} - {b}?", str(a - b))


_SENTENCES = (
    "{name} is {age} and lives in {city}.",
    "{name}, aged {age}, lives in {city}.",
    "Meet {name} from {city}, who is {age}.",
    "{city} is home to {name}, age {age}.",
    "At {age}, {name} moved to {city}.",
)


def json_extract(rng: random.Random) -> Example:
    """Pull name, age and city out of a sentence into a fixed-order JSON object."""
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    sentence = rng.choice(_SENTENCES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return Example(f"Extract name, age, city as JSON: {sentence}", answer)


#: name -> generator; adding a task is one function and one line here.
TASKS: dict[str, Task] = {
    "dates": dates,
    "arithmetic": arithmetic,
    "json_extract": json_extract,
}


def _stream_seed(name: str, seed: int, split: str, options: Mapping[str, Any]) -> str:
    """The seed string of one split's stream; only options away from their default enter it."""
    specs = OPTIONS.get(name, {})
    changed = {k: v for k, v in options.items() if v != specs[k].default}
    base = f"{name}:{seed}:{split}"
    return base if not changed else base + ":" + json.dumps(changed, sort_keys=True, separators=(",", ":"))


def generate_splits(
    name: str,
    n_train: int,
    n_validation: int,
    n_test: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> dict[str, list[Example]]:
    """Draw disjoint train/validation/test splits of a built-in task.

    Each split has its own stream seeded by (task, seed, split, non-default
    options), so a split's content depends only on those and on the splits
    drawn before it. ``options`` are the task's keyword options, already valid
    (``DataConfig.from_dict`` checks them); they are checked again here.
    """
    task = TASKS[name]
    options = parse_options(name, options)
    kwargs = {k: spec.default for k, spec in OPTIONS.get(name, {}).items()} | options
    seen: set[str] = set()
    out: dict[str, list[Example]] = {}
    for split, n in (("test", n_test), ("validation", n_validation), ("train", n_train)):
        rng = random.Random(_stream_seed(name, seed, split, options))
        examples: list[Example] = []
        for _ in range(50 * n + 1000):  # bound: a small task space must fail, not hang
            if len(examples) == n:
                break
            ex = task(rng, **kwargs)
            if ex.prompt not in seen:
                seen.add(ex.prompt)
                examples.append(ex)
        if len(examples) < n:
            hint = f" with task_options {options}" if options else ""
            raise ConfigError(f"data.n_{split}", n, f"task {name}{hint} ran out of distinct prompts")
        out[split] = examples
    return {split: out[split] for split in ("train", "validation", "test")}
