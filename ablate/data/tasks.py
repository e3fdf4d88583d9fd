"""Built-in generated tasks: offline, deterministic, and checkable by exact match.

A task is one function ``rng -> Example`` plus one line in ``TASKS``. The
prompts are short on purpose: the default model is SmolLM2-135M on a laptop
CPU, so each example stays under ~40 tokens before the chat template (``sql``, which
states a table schema, under ~70).

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


# --- sql: WikiSQL-shaped text-to-SQL --------------------------------------------------------------
# table -> its columns in schema order: (column, plural, values); values are a fixed list (text,
# compared with = only and quoted) or an inclusive integer range (numeric: =, > or <, and the
# only columns MAX/MIN/AVG take). At most two text columns per table, so any 3 of 5 hold a number.
SqlColumn = tuple[str, str, tuple[str, ...] | range]
SQL_TABLES: dict[str, tuple[SqlColumn, ...]] = {
    "employees": (
        ("name", "names", NAMES),
        ("age", "ages", range(20, 66)),
        ("city", "cities", CITIES),
        ("salary", "salaries", range(30, 151)),
        ("bonus", "bonuses", range(0, 51)),
    ),
    "orders": (
        ("customer", "customers", NAMES),
        ("city", "cities", CITIES),
        ("amount", "amounts", range(10, 1000)),
        ("quantity", "quantities", range(1, 51)),
        ("day", "days", range(1, 32)),
    ),
    "cities": (
        ("name", "names", CITIES),
        ("population", "populations", range(1, 40)),
        ("area", "areas", range(10, 1000)),
        ("elevation", "elevations", range(0, 2001)),
        ("rank", "ranks", range(1, 101)),
    ),
    "products": (
        ("maker", "makers", NAMES),
        ("city", "cities", CITIES),
        ("price", "prices", range(1, 1000)),
        ("weight", "weights", range(1, 100)),
        ("rating", "ratings", range(1, 6)),
    ),
    "students": (
        ("name", "names", NAMES),
        ("age", "ages", range(17, 31)),
        ("city", "cities", CITIES),
        ("grade", "grades", range(1, 101)),
        ("year", "years", range(1, 6)),
    ),
}
# op -> surface forms of "<column> <op> <value>"; text columns take "=" only.
_SQL_CONDITIONS = {
    "=": ("{col} {val}", "{col} equal to {val}", "{col} of {val}"),
    ">": ("{col} above {val}", "{col} over {val}", "{col} greater than {val}"),
    "<": ("{col} below {val}", "{col} under {val}", "{col} less than {val}"),
}
# shape -> (templates with conditions, templates without); {plural} is the selected column's plural.
_SQL_QUESTIONS = {
    "select": (
        (
            "Which {plural} have {where}?",
            "List the {plural} with {where}.",
            "Show {col} for rows with {where}.",
        ),
        ("Which {plural} are listed?", "List all {plural}.", "Show every {col}."),
    ),
    "count": (
        (
            "How many rows have {where}?",
            "Count the {table} with {where}.",
            "What is the number of {table} with {where}?",
        ),
        ("How many rows are there?", "Count the {table}.", "What is the number of {table}?"),
    ),
    "agg": (
        (
            "What is the {agg} {col} for rows with {where}?",
            "Find the {agg} {col} of {table} with {where}.",
            "Give the {agg} {col} among {table} with {where}.",
        ),
        (
            "What is the {agg} {col}?",
            "Find the {agg} {col} of all {table}.",
            "Give the {agg} {col} over all rows.",
        ),
    ),
}
_SQL_AGGREGATES = {
    "MAX": ("highest", "maximum", "largest"),
    "MIN": ("lowest", "minimum", "smallest"),
    "AVG": ("average", "mean"),
}


def sql(rng: random.Random, *, conditions: Sequence[int] = (0, 2), aggregates: bool = True) -> Example:
    """Turn a question about a stated table into one normalised SQL query (WikiSQL-shaped).

    The table shows 3-4 of its columns; the query selects one column, or with ``aggregates``
    (half of the queries) COUNT(*) or MAX/MIN/AVG of a numeric column, under ``conditions``
    (low, high) WHERE conditions joined by AND, in the order the question names them.
    """
    table = rng.choice(list(SQL_TABLES))
    picked = sorted(rng.sample(range(5), rng.randint(3, 4)))
    columns = [SQL_TABLES[table][i] for i in picked]
    shape = rng.choice(("count", "MAX", "MIN", "AVG")) if aggregates and rng.random() < 0.5 else "select"
    numeric = [c for c in columns if isinstance(c[2], range)]
    target = None if shape == "count" else rng.choice(columns if shape == "select" else numeric)
    rest = [c for c in columns if c is not target]
    where, sql_where = [], []
    for col, _, values in rng.sample(rest, rng.randint(conditions[0], conditions[1])):
        op = "=" if isinstance(values, tuple) else rng.choice(("=", ">", "<"))
        val = rng.choice({">": values[:-1], "<": values[1:]}.get(op, values))  # never an empty range
        where.append(rng.choice(_SQL_CONDITIONS[op]).format(col=col, val=val))
        sql_where.append(f"{col} {op} '{val}'" if isinstance(val, str) else f"{col} {op} {val}")
    key = shape if shape in ("select", "count") else "agg"
    template = rng.choice(_SQL_QUESTIONS[key][0 if where else 1])
    agg = "" if shape in ("select", "count") else rng.choice(_SQL_AGGREGATES[shape])
    col, plural = (target[0], target[1]) if target else ("", "")
    question = template.format(plural=plural, col=col, table=table, agg=agg, where=" and ".join(where))
    what = {"select": col, "count": "COUNT(*)"}.get(shape, f"{shape}({col})")
    query = f"SELECT {what} FROM {table}" + (" WHERE " + " AND ".join(sql_where) if sql_where else "")
    schema = ", ".join(c[0] for c in columns)
    return Example(f"Table {table}({schema}). Question: {question}", query)


# --- sentiment: short generated reviews ---------------------------------------------------------
# domain -> (singular things reviewed, positive words, negative words); the shared words fit all.
_REVIEWED = {
    "product": (
        ("blender", "kettle", "lamp", "backpack", "keyboard", "charger", "phone case"),
        ("sturdy", "reliable", "handy"),
        ("flimsy", "cheap", "useless"),
    ),
    "restaurant": (
        ("food", "pizza", "soup", "curry", "dessert", "service", "burger"),
        ("delicious", "tasty", "fresh"),
        ("bland", "greasy", "stale"),
    ),
    "movie": (
        ("movie", "plot", "ending", "acting", "soundtrack", "film", "sequel"),
        ("gripping", "funny", "moving"),
        ("boring", "predictable", "dull"),
    ),
}
_POSITIVE = ("great", "excellent", "wonderful", "good", "lovely", "fantastic", "superb", "impressive")
_NEGATIVE = ("bad", "terrible", "awful", "poor", "disappointing", "horrible", "mediocre", "dreadful")
# Only words whose negation plainly means the opposite: "not good" is negative, "not bad" positive.
_NEGATABLE = {
    "positive": ("good", "great", "impressive", "reliable", "tasty", "fresh", "funny", "moving"),
    "negative": ("bad", "disappointing", "boring", "bland", "greasy", "flimsy", "dull", "predictable"),
}
_INTENSIFIERS = ("very ", "really ", "truly ", "so ", "extremely ")
_REVIEWS = (
    "The {thing} was {phrase}.",
    "I thought the {thing} was {phrase}.",
    "Honestly, the {thing} is {phrase}.",
    "To me the {thing} was {phrase}.",
    "I found the {thing} {phrase}.",
)
# A second sentence agrees with the first or says nothing either way; none says " not ".
_FOLLOW_UPS = {
    "positive": ("I would recommend it.", "Worth every penny.", "I loved it.", "Five stars."),
    "negative": ("I regret it.", "Never again.", "What a waste.", "One star."),
    "neutral": ("I went last week.", "It was my first time.", "A friend suggested it."),
}


def sentiment(rng: random.Random, *, negation: bool = True) -> Example:
    """Label a one- or two-sentence review ``positive`` or ``negative`` (half each).

    With ``negation`` a quarter of the reviews negate a word of the other polarity
    ("not bad" is positive, "not good" negative); an intensifier never meets a negation.
    """
    label = "positive" if rng.random() < 0.5 else "negative"
    other = "negative" if label == "positive" else "positive"
    domain = rng.choice(list(_REVIEWED))
    things, good, bad = _REVIEWED[domain]
    if negation and rng.random() < 0.25:
        fits = (*_POSITIVE, *_NEGATIVE, *good, *bad)  # no "not tasty" film
        phrase = "not " + rng.choice([w for w in _NEGATABLE[other] if w in fits])
        phrase += " at all" if rng.random() < 0.3 else ""
    else:
        words = (*_POSITIVE, *good) if label == "positive" else (*_NEGATIVE, *bad)
        phrase = (rng.choice(_INTENSIFIERS) if rng.random() < 0.4 else "") + rng.choice(words)
    review = rng.choice(_REVIEWS).format(thing=rng.choice(things), phrase=phrase)
    if rng.random() < 0.5:
        review += " " + rng.choice(_FOLLOW_UPS[label if rng.random() < 0.6 else "neutral"])
    return Example(f"Is this {domain} review positive or negative? {review}", label)


#: name -> generator; adding a task is one function and one line here.
TASKS: dict[str, Task] = {
    "dates": dates,
    "arithmetic": arithmetic,
    "json_extract": json_extract,
    "sql": sql,
    "sentiment": sentiment,
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
