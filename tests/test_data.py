"""Data pipeline: generated tasks, file/HF loaders, encoding and batching.

Everything runs offline on the byte-level tiny tokenizer, with and without a
chat template, so both prompt paths of ``encode`` are covered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import random
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate.cli import normalize_overrides
from ablate.data import TASKS, DataConfig, Example, load_splits
from ablate.data.tokenize import IGNORE_INDEX, collate, encode, make_batches, padding_fraction
from ablate.errors import ConfigError
from ablate.schema.tasks import BUILTIN_TASKS, OPTIONS
from ablate.tiny import build_tiny_tokenizer

SPLIT_SIZES = {"train": 300, "validation": 40, "test": 60}


def _tasks(
    name: str, seed: int = 0, task_options: dict[str, Any] | None = None, **sizes: int
) -> dict[str, list[Example]]:
    counts = {f"n_{k}": v for k, v in (SPLIT_SIZES | sizes).items()}
    opts = {} if task_options is None else {"task_options": task_options}
    return load_splits(DataConfig.from_dict({"name": name, "seed": seed, **counts, **opts}))


def _plain_tokenizer() -> Any:
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    return tok


TOKENIZERS = {"chat": build_tiny_tokenizer, "plain": _plain_tokenizer}


# --- tiny tokenizer ---------------------------------------------------------------------------


def test_tiny_tokenizer_is_small_byte_level_chatml() -> None:
    tok = build_tiny_tokenizer()
    assert len(tok) == 261  # 256 bytes + 5 specials
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert tok.convert_tokens_to_ids(specials) == [256, 257, 258, 259, 260]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 260)
    text = 'Ünïcode 2021-03-05 {"a": 1}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert (
        rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    # Each call is a fresh object: dropping the template on one leaves the next intact.
    tok.chat_template = None
    assert build_tiny_tokenizer().chat_template is not None


# --- built-in tasks ---------------------------------------------------------------------------


def _check_dates(ex: Example) -> None:
    text = ex.prompt.removeprefix("Convert to YYYY-MM-DD: ")
    text = re.sub(r"(\d+)(st|nd|rd|th)", r"\1", text.removeprefix("the ")).replace(" of", "")
    text = text.replace(",", "")
    for fmt in ("%B %d %Y", "%d %B %Y", "%b %d %Y", "%Y/%m/%d", "%d-%b-%Y"):
        try:
            parsed = dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        assert ex.response == parsed.isoformat()
        return
    raise AssertionError(f"unparsed date prompt: {ex.prompt}")


def _parse_arithmetic(ex: Example) -> tuple[int, str, int]:
    m = re.fullmatch(r"What is ([1-9]\d*) ([+-]) ([1-9]\d*)\?", ex.prompt)
    assert m, ex.prompt
    a, op, b = int(m[1]), m[2], int(m[3])
    assert ex.response == str(a + b if op == "+" else a - b)
    assert int(ex.response) >= 0
    return a, op, b


def _check_arithmetic(ex: Example) -> None:
    a, _, b = _parse_arithmetic(ex)
    assert 10 <= a <= 9999 and 10 <= b <= 9999  # default options: 2-4 digit operands


def _check_json_extract(ex: Example) -> None:
    obj = json.loads(ex.response)
    assert list(obj) == ["name", "age", "city"] and isinstance(obj["age"], int)
    sentence = ex.prompt.removeprefix("Extract name, age, city as JSON: ")
    assert all(str(obj[k]) in sentence for k in obj)


# The sql tables' columns, written out again here: text columns hold NAMES/CITIES, the rest numbers.
SQL_TEXT = {"name", "city", "customer", "maker"}
SQL_COLUMNS = {
    "employees": ["name", "age", "city", "salary", "bonus"],
    "orders": ["customer", "city", "amount", "quantity", "day"],
    "cities": ["name", "population", "area", "elevation", "rank"],
    "products": ["maker", "city", "price", "weight", "rating"],
    "students": ["name", "age", "city", "grade", "year"],
}
# How the question words each operator and each aggregate.
SQL_OP_WORDS = {
    "=": ("", " equal to", " of"),
    ">": (" above", " over", " greater than"),
    "<": (" below", " under", " less than"),
}
SQL_AGG_WORDS = {
    "MAX": ("highest", "maximum", "largest"),
    "MIN": ("lowest", "minimum", "smallest"),
    "AVG": ("average", "mean"),
    "COUNT": ("How many", "Count", "number of"),
}
_SQL_PROMPT = re.compile(r"Table ([a-z]+)\(([a-z]+(?:, [a-z]+){2,3})\)\. Question: ([A-Z][^.?]*[a-z0-9][.?])")
_SQL_QUERY = re.compile(
    r"SELECT (?:(?P<col>[a-z]+)|COUNT\(\*\)|(?P<agg>MAX|MIN|AVG)\((?P<agg_col>[a-z]+)\))"
    r" FROM (?P<table>[a-z]+)(?: WHERE (?P<where>.+))?"
)
_SQL_CONDITION = re.compile(r"(?P<col>[a-z]+) (?P<op>[=<>]) (?P<val>'[A-Z][a-z]+'|0|[1-9]\d*)")


def _parse_sql(ex: Example) -> tuple[str, list[tuple[str, str, str]]]:
    """(SELECT, COUNT, MAX, MIN or AVG; the conditions as (column, op, value)), checked against
    the table and columns the prompt states and the words of its question."""
    prompt, query = _SQL_PROMPT.fullmatch(ex.prompt), _SQL_QUERY.fullmatch(ex.response)
    assert prompt and query, (ex.prompt, ex.response)
    table, stated, question = prompt[1], prompt[2].split(", "), prompt[3]
    assert query["table"] == table and table in SQL_COLUMNS
    assert stated == [c for c in SQL_COLUMNS[table] if c in stated]  # in the table's order
    parts = query["where"].split(" AND ") if query["where"] else []
    matches = [_SQL_CONDITION.fullmatch(p) for p in parts]
    assert all(matches), ex.response
    conds = [m.group("col", "op", "val") for m in matches if m]
    used = [c for c, _, _ in conds] + [c for c in (query["col"], query["agg_col"]) if c]
    assert set(used) <= set(stated) and len(set(used)) == len(used), ex  # stated columns, each once
    shape = query["agg"] or ("SELECT" if query["col"] else "COUNT")
    named = [k for k, words in SQL_AGG_WORDS.items() if any(w in question for w in words)]
    assert named == ([] if shape == "SELECT" else [shape]), ex
    if query["agg"]:
        assert query["agg_col"] not in SQL_TEXT, ex  # MAX/MIN/AVG of numbers only
    # The conditions, in the question's order: "<column><op words> <value>", joined by " and ".
    for col, op, val in conds:
        assert val.startswith("'") == (col in SQL_TEXT) and (op == "=" or col not in SQL_TEXT), ex
    phrases = ["|".join(f"{c}{w} {v.strip(chr(39))}" for w in SQL_OP_WORDS[o]) for c, o, v in conds]
    if conds:
        joined = " and ".join(f"(?:{p})" for p in phrases)
        assert re.search(rf" (?:have|with) {joined}[.?]$", question), ex
    else:
        assert not re.search(r" (?:have|with) ", question), ex
    return shape, conds


def _check_sql(ex: Example) -> None:
    _, conds = _parse_sql(ex)
    assert len(conds) <= 2  # default options: 0-2 conditions
    assert ex.response == " ".join(ex.response.split())  # normalised spacing


SENTIMENT_WORDS = {
    "positive": {"great", "excellent", "wonderful", "good", "lovely", "fantastic", "superb", "impressive"}
    | {"sturdy", "reliable", "handy", "delicious", "tasty", "fresh", "gripping", "funny", "moving"},
    "negative": {"bad", "terrible", "awful", "poor", "disappointing", "horrible", "mediocre", "dreadful"}
    | {"flimsy", "cheap", "useless", "bland", "greasy", "stale", "boring", "predictable", "dull"},
}
# Words of a second sentence that take a side: it never takes the side opposite the label.
SENTIMENT_CUES = {
    "positive": ("recommend", "loved", "Worth", "Five"),
    "negative": ("regret", "Never", "waste", "One"),
}
_REVIEW = re.compile(
    r"Is this (?:product|restaurant|movie) review positive or negative\? "
    r"[A-Z][^.]*? (?P<neg>not )?(?:(?:very|really|truly|so|extremely) )?(?P<word>[a-z]+)(?: at all)?\."
    r"(?: (?P<more>[A-Z][^.]*\.))?"
)


def _check_sentiment(ex: Example) -> None:
    m = _REVIEW.fullmatch(ex.prompt)
    assert m, ex.prompt
    polarity = next(k for k, words in SENTIMENT_WORDS.items() if m["word"] in words)
    flipped = {"positive": "negative", "negative": "positive"}[polarity]
    assert ex.response == (flipped if m["neg"] else polarity), ex
    assert ex.prompt.count(" not ") == bool(m["neg"])  # the only negation is the first sentence's
    against = "negative" if ex.response == "positive" else "positive"
    assert not any(w in (m["more"] or "") for w in SENTIMENT_CUES[against]), ex


CHECKS = {
    "dates": _check_dates,
    "arithmetic": _check_arithmetic,
    "json_extract": _check_json_extract,
    "sql": _check_sql,
    "sentiment": _check_sentiment,
}


def test_task_registry_matches_config() -> None:
    assert set(TASKS) == set(BUILTIN_TASKS) == set(CHECKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_splits_are_exact_disjoint_and_seeded(task: str) -> None:
    splits = _tasks(task)
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES
    prompts = [ex.prompt for split in splits.values() for ex in split]
    assert len(set(prompts)) == sum(SPLIT_SIZES.values())  # disjoint, no repeats within
    assert _tasks(task) == splits
    other = _tasks(task, seed=1)
    assert all(other[k] != splits[k] for k in splits)
    # The evaluation splits do not move when only the training set grows.
    bigger = _tasks(task, train=500)
    assert bigger["test"] == splits["test"] and bigger["validation"] == splits["validation"]
    assert len(bigger["train"]) == 500


# Longest prompt + answer in characters, where a task's default of 120 does not fit.
MAX_CHARS = {"sentiment": 140, "sql": 240}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_answers_are_correct_and_short(task: str) -> None:
    examples = [ex for split in _tasks(task).values() for ex in split]
    for ex in examples:
        CHECKS[task](ex)
    # Short enough for SmolLM2-135M on a CPU: ~3 characters per token keeps this under ~40 tokens
    # (a review's prose ~4; sql states a table schema: under ~70 tokens, far below max_length 128).
    assert max(len(ex.prompt) + len(ex.response) for ex in examples) <= MAX_CHARS.get(task, 120)


# Drawn before task options existed (sql and sentiment: when they were added): default options
# must keep drawing exactly these (the first three test examples at SPLIT_SIZES, seed 0), so old
# runs and new runs see the same data.
FROZEN_TEST_HEAD = {
    "arithmetic": [
        ("What is 30 + 68?", "98"),
        ("What is 334 - 106?", "228"),
        ("What is 7325 - 4425?", "2900"),
    ],
    "dates": [
        ("Convert to YYYY-MM-DD: 1994/09/18", "1994-09-18"),
        ("Convert to YYYY-MM-DD: 1986/03/10", "1986-03-10"),
        ("Convert to YYYY-MM-DD: February 13th 1952", "1952-02-13"),
    ],
    "json_extract": [
        (
            "Extract name, age, city as JSON: Alice is 82 and lives in Madrid.",
            '{"name": "Alice", "age": 82, "city": "Madrid"}',
        ),
        (
            "Extract name, age, city as JSON: At 18, Rosa moved to Denver.",
            '{"name": "Rosa", "age": 18, "city": "Denver"}',
        ),
        (
            "Extract name, age, city as JSON: Meet Umar from Lima, who is 61.",
            '{"name": "Umar", "age": 61, "city": "Lima"}',
        ),
    ],
    "sentiment": [
        (
            "Is this product review positive or negative? I found the backpack not impressive. What a waste.",
            "negative",
        ),
        ("Is this movie review positive or negative? The ending was very wonderful.", "positive"),
        ("Is this movie review positive or negative? To me the plot was great.", "positive"),
    ],
    "sql": [
        (
            "Table products(maker, city, weight, rating). Question: What is the minimum weight?",
            "SELECT MIN(weight) FROM products",
        ),
        (
            "Table cities(name, population, elevation, rank). Question: Which populations are listed?",
            "SELECT population FROM cities",
        ),
        (
            "Table orders(customer, amount, quantity, day). Question: What is the minimum amount for rows"
            " with day above 25 and quantity greater than 7?",
            "SELECT MIN(amount) FROM orders WHERE day > 25 AND quantity > 7",
        ),
    ],
}
# sha256 of every split's (prompt, response) pairs at SPLIT_SIZES, seed 0, from the same draw.
FROZEN_DIGEST = {
    "arithmetic": "9bfa824f9ade1112",
    "dates": "f8316fac8192209c",
    "json_extract": "902eb763a984c51b",
    "sentiment": "04b2d825ae0ed447",
    "sql": "5547d75386ffb191",
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_default_task_options_draw_the_frozen_examples(task: str) -> None:
    splits = _tasks(task)
    assert [(ex.prompt, ex.response) for ex in splits["test"][:3]] == FROZEN_TEST_HEAD[task]
    pairs = {k: [(ex.prompt, ex.response) for ex in v] for k, v in splits.items()}
    assert hashlib.sha256(repr(pairs).encode()).hexdigest()[:16] == FROZEN_DIGEST[task]
    # Spelling the defaults out (as conf/data/arithmetic.yaml does) changes nothing.
    defaults = {k: spec.default for k, spec in OPTIONS.get(task, {}).items()}
    assert _tasks(task, task_options=defaults) == splits


@pytest.mark.parametrize("task", sorted(OPTIONS))
def test_task_option_defaults_are_the_generators_defaults(task: str) -> None:
    params = inspect.signature(TASKS[task]).parameters
    for key, spec in OPTIONS[task].items():
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
        assert spec.parse(params[key].default) == spec.default == spec.parse(spec.default)


# options -> (operand digit range, operations); every case's space is large enough for SPLIT_SIZES.
ARITHMETIC_OPTIONS = {
    "default": ({}, (2, 4), "+-"),
    "one to two digits": ({"digits": [1, 2]}, (1, 2), "+-"),
    "two digits": ({"digits": [2, 2]}, (2, 2), "+-"),
    "two to three digits": ({"digits": [2, 3]}, (2, 3), "+-"),
    "addition only": ({"ops": "+"}, (2, 4), "+"),
    "subtraction only, wide": ({"digits": [3, 6], "ops": "-"}, (3, 6), "-"),
    "ops in any order": ({"digits": [1, 3], "ops": "-+"}, (1, 3), "+-"),
}


@pytest.mark.parametrize("case", sorted(ARITHMETIC_OPTIONS))
def test_arithmetic_options_set_digits_and_operations(case: str) -> None:
    options, (low, high), ops = ARITHMETIC_OPTIONS[case]
    splits = _tasks("arithmetic", task_options=options)
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES
    prompts = [ex.prompt for split in splits.values() for ex in split]
    assert len(set(prompts)) == sum(SPLIT_SIZES.values())  # disjoint, no repeats within
    assert _tasks("arithmetic", task_options=options) == splits  # deterministic
    parsed = [_parse_arithmetic(ex) for split in splits.values() for ex in split]
    digits = Counter(len(str(n)) for a, _, b in parsed for n in (a, b))
    assert set(digits) == set(range(low, high + 1))  # every count in the range, nothing outside
    assert {op for _, op, _ in parsed} == set(ops)
    # A change of options is a change of examples, drawn deterministically from the same seed.
    if case != "default":
        default = _tasks("arithmetic")
        assert all(splits[k] != default[k] for k in splits)


def test_arithmetic_task_options_are_normalised_in_the_config() -> None:
    d = {"name": "arithmetic", "task_options": OmegaConf.create({"digits": [1, 3], "ops": "-+"})}
    cfg = DataConfig.from_dict(OmegaConf.create(d))
    assert cfg.task_options == {"digits": [1, 3], "ops": "+-"}
    assert type(cfg.task_options["digits"]) is list  # plain values, as MLflow params and JSON want
    assert DataConfig.from_dict({"name": "arithmetic"}).task_options == {}
    assert hash(cfg) == hash(DataConfig.from_dict({"name": "arithmetic"}))  # still hashable


# options -> (WHERE conditions range, aggregates drawn); every case's space is large enough for SPLIT_SIZES.
SQL_OPTIONS = {
    "default": ({}, (0, 2), True),
    "no conditions": ({"conditions": [0, 0]}, (0, 0), True),
    "one condition": ({"conditions": [1, 1]}, (1, 1), True),
    "no conditions, no aggregates": ({"conditions": [0, 0], "aggregates": False}, (0, 0), False),
    "one or two, no aggregates": ({"conditions": [1, 2], "aggregates": False}, (1, 2), False),
    "two conditions": ({"conditions": [2, 2]}, (2, 2), True),
}


@pytest.mark.parametrize("case", sorted(SQL_OPTIONS))
def test_sql_options_set_conditions_and_aggregates(case: str) -> None:
    options, (low, high), aggregates = SQL_OPTIONS[case]
    splits = _tasks("sql", task_options=options)
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES
    prompts = [ex.prompt for split in splits.values() for ex in split]
    assert len(set(prompts)) == sum(SPLIT_SIZES.values())  # disjoint, no repeats within
    assert _tasks("sql", task_options=options) == splits  # deterministic
    parsed = [_parse_sql(ex) for split in splits.values() for ex in split]  # consistent with the table
    assert {len(conds) for _, conds in parsed} == set(range(low, high + 1))  # every count, none outside
    shapes = Counter(shape for shape, _ in parsed)
    if aggregates:  # half the queries select a column, the other half COUNT/MAX/MIN/AVG about evenly
        assert set(shapes) == {"SELECT", "COUNT", "MAX", "MIN", "AVG"}
        assert 0.4 < shapes["SELECT"] / len(parsed) < 0.6
    else:
        assert set(shapes) == {"SELECT"} and not any("(" in ex.response for s in splits.values() for ex in s)
    ops = Counter(op for _, conds in parsed for _, op, _ in conds)
    assert set(ops) == ({"=", ">", "<"} if high else set())
    if case != "default":
        default = _tasks("sql")
        assert all(splits[k] != default[k] for k in splits)


def test_sql_questions_have_several_forms_per_query_shape() -> None:
    forms: dict[str, set[str]] = {}
    for ex in _tasks("sql", train=1000)["train"]:
        shape, conds = _parse_sql(ex)
        question = ex.prompt.split("Question: ", 1)[1]
        kind = shape if shape in ("SELECT", "COUNT") else "MAX/MIN/AVG"
        forms.setdefault(f"{kind}, conditions: {bool(conds)}", set()).add(
            question.split()[0]
        )  # each template opens with its own word
    assert len(forms) == 6 and all(len(f) >= 3 for f in forms.values()), forms


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_answer_is_a_function_of_the_prompt(task: str) -> None:
    # The same question never asks for two answers, so exact match can be reached.
    rng, answers = random.Random(0), {}
    kwargs = {k: spec.default for k, spec in OPTIONS.get(task, {}).items()}
    for _ in range(5000):
        ex = TASKS[task](rng, **kwargs)
        assert answers.setdefault(ex.prompt, ex.response) == ex.response, ex.prompt


def test_sentiment_is_balanced_and_negation_is_an_option() -> None:
    n = 1000
    for negation in (True, False):
        train = _tasks("sentiment", train=n, task_options={"negation": negation})["train"]
        for ex in train:
            _check_sentiment(ex)
        labels = Counter(ex.response for ex in train)
        assert set(labels) == {"positive", "negative"} and 0.45 <= labels["positive"] / n <= 0.55
        negated = [ex for ex in train if " not " in ex.prompt]
        if not negation:
            assert not negated
            continue
        # "not good" is negative and "not bad" positive, both about as often as each other.
        assert 0.15 < len(negated) / n < 0.35
        assert 0.35 < sum(ex.response == "positive" for ex in negated) / len(negated) < 0.65
        assert any("not bad" in ex.prompt and ex.response == "positive" for ex in negated)
        assert any("not good" in ex.prompt and ex.response == "negative" for ex in negated)


CONF = Path(__file__).resolve().parent.parent / "conf"
TASK_CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem not in ("file", "hf"))


@pytest.mark.parametrize("option", TASK_CONFIGS)
def test_shipped_task_configs_compose_and_draw(option: str) -> None:
    # As the CLI composes them, with one task option overridden where the task has options.
    d = _composed_data(f"data={option}")
    cfg = DataConfig.from_dict(d)
    assert cfg.is_builtin and cfg.task_options == d.get("task_options", {})
    for key, spec in OPTIONS.get(cfg.name, {}).items():
        assert key in d["task_options"], f"conf/data/{option}.yaml should spell out {key}"
        assert spec.parse(d["task_options"][key]) == d["task_options"][key]  # written normalised
    sizes = {f"n_{k}": v for k, v in SPLIT_SIZES.items()}
    assert {k: len(v) for k, v in load_splits(DataConfig.from_dict(d | sizes)).items()} == SPLIT_SIZES
    if cfg.name == "arithmetic":
        low = d["task_options"]["digits"][0]
        over = _composed_data(f"data={option}", f"data.task_options.digits=[{low},{low + 1}]")
        assert DataConfig.from_dict(over).task_options["digits"] == [low, low + 1]


def _composed_data(*overrides: str) -> dict[str, Any]:
    args = normalize_overrides(["peft=lora", *overrides])  # the CLI's checks pass data.task_options.*
    assert args[1:] == list(overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=args), resolve=True)
    assert isinstance(cfg, dict)
    return cfg["data"]


def test_small_task_space_runs_out_with_a_config_error() -> None:
    # 1-digit addition has 81 distinct prompts: the test split takes 60, validation cannot get 40.
    with pytest.raises(ConfigError) as err:
        _tasks("arithmetic", task_options={"digits": [1, 1], "ops": "+"})
    _assert_config_error(err.value, "data.n_validation", SPLIT_SIZES["validation"])
    assert "ran out" in str(err.value) and "digits" in str(err.value)


def test_dates_use_several_surface_forms() -> None:
    forms = Counter(
        re.sub(r"[A-Za-z]+", "A", re.sub(r"\d+", "9", ex.prompt.split(": ", 1)[1]))
        for ex in _tasks("dates")["train"]
    )
    assert len(forms) >= 6


# --- encode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(TOKENIZERS))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_encode_masks_exactly_the_prompt(task: str, variant: str) -> None:
    tok = TOKENIZERS[variant]()
    examples = _tasks(task)["validation"]
    enc = encode(examples, tok, max_length=1000)
    assert len(enc) == len(examples) and enc.dropped == 0
    for ex, e in zip(examples, enc, strict=True):
        response = tok(ex.response, add_special_tokens=False)["input_ids"]
        assert len(e.labels) == len(e.input_ids)
        assert sum(label != IGNORE_INDEX for label in e.labels) == len(response) + 1
        assert tok.decode([x for x in e.labels if x != IGNORE_INDEX]) == ex.response + tok.eos_token
        assert e.labels[e.n_prompt :] == e.input_ids[e.n_prompt :]
        if variant == "chat":
            msgs = [{"role": "user", "content": ex.prompt}]
            # transformers 5: tokenize=True returns a BatchEncoding unless return_dict=False.
            ref = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
            assert e.input_ids[: e.n_prompt] == ref
        else:
            ref = [tok.bos_token_id] + tok(ex.prompt + "\n", add_special_tokens=False)["input_ids"]
            assert e.input_ids[: e.n_prompt] == ref


def test_encode_drops_long_examples_and_counts_them() -> None:
    tok = build_tiny_tokenizer()
    examples = _tasks("arithmetic")["test"]
    lengths = [len(e.input_ids) for e in encode(examples, tok, max_length=1000)]
    cut = sorted(lengths)[len(lengths) // 2]
    enc = encode(examples, tok, max_length=cut)
    assert len(enc) == sum(n <= cut for n in lengths)
    assert enc.dropped == sum(n > cut for n in lengths) > 0
    assert all(len(e.input_ids) <= cut for e in enc)
    with pytest.raises(ConfigError) as err:
        encode(examples, tok, max_length=min(lengths) - 1)
    assert err.value.key == "data.max_length" and err.value.value == min(lengths) - 1


# --- batching ---------------------------------------------------------------------------------


def _mixed_encoded() -> list[Any]:
    tok = build_tiny_tokenizer()
    examples = [ex for task in sorted(TASKS) for ex in _tasks(task)["validation"]]
    return list(encode(examples, tok, max_length=1000))


def _unpadded(batches: list[dict[str, torch.Tensor]]) -> list[tuple[int, ...]]:
    rows = []
    for b in batches:
        for ids, mask, labels in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # right padding
            assert (labels[n:] == IGNORE_INDEX).all() and (ids[n:] == 256).all()
            rows.append(tuple(ids[:n].tolist()))
    return rows


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_every_example_once(shuffle: bool) -> None:
    enc = _mixed_encoded()
    batches = make_batches(enc, 8, shuffle=shuffle, seed=3, pad_id=256)
    assert len(enc) == 40 * len(TASKS)  # each task's validation split
    assert [len(b["input_ids"]) for b in batches] == [8] * (len(enc) // 8)
    assert all(b[k].dtype == torch.long for b in batches for k in ("input_ids", "attention_mask", "labels"))
    assert Counter(_unpadded(batches)) == Counter(tuple(e.input_ids) for e in enc)
    # collated on first read and kept; slices and negative indices read the same batches
    assert batches[0] is batches[0] and batches[-1] is batches[len(batches) - 1]
    assert batches[:2] == [batches[0], batches[1]]
    for b in batches:  # the same tensors the per-row loop built: pads, masks, labels where they belong
        rows = b["attention_mask"].sum(1)
        for row, n in enumerate(rows.tolist()):
            e = enc[int(b["index"][row])]
            assert (
                b["input_ids"][row, :n].tolist() == e.input_ids and b["labels"][row, :n].tolist() == e.labels
            )
            assert (b["input_ids"][row, n:] == 256).all() and (b["labels"][row, n:] == IGNORE_INDEX).all()
    if not shuffle:
        widths = [b["input_ids"].shape[1] for b in batches]
        assert widths == sorted(widths)


def test_length_grouping_pads_less_than_random_batches() -> None:
    enc = _mixed_encoded()
    batches = make_batches(enc, 8, shuffle=True, seed=0, pad_id=256)
    assert batches.padding_fraction() > 0  # from the lengths alone, before any batch is collated
    grouped = padding_fraction(batches)
    assert batches.padding_fraction() == pytest.approx(grouped, abs=1e-12)
    order = list(range(len(enc)))
    random.Random(0).shuffle(order)
    naive = [collate([enc[i] for i in order[j : j + 8]], 256) for j in range(0, len(order), 8)]
    assert grouped < padding_fraction(naive) / 3
    assert padding_fraction([]) == 0.0


def test_batches_are_deterministic_per_seed() -> None:
    enc = _mixed_encoded()

    def run(seed: int) -> list[tuple[int, ...]]:
        return _unpadded(make_batches(enc, 8, shuffle=True, seed=seed, pad_id=256))

    assert run(7) == run(7)
    assert run(7) != run(8)


# --- user files -------------------------------------------------------------------------------

ROWS = [{"question": f"q{i} when?", "answer": f"{2000 + i}-03-05" if i % 2 else f"00{i}"} for i in range(50)]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    df = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


def _file_cfg(path: Path, **kw: Any) -> DataConfig:
    d = {"name": "file", "path": str(path), "prompt_field": "question", "response_field": "answer"}
    return DataConfig.from_dict(d | {"n_train": None, "n_validation": None, "n_test": None} | kw)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_file_round_trip_and_carved_splits(tmp_path: Path, ext: str) -> None:
    path = _write(tmp_path / f"d.{ext}", ROWS + ROWS[:5])  # 5 repeated prompts
    splits = load_splits(_file_cfg(path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 40, "validation": 5, "test": 5}
    got = [ex for split in splits.values() for ex in split]
    # Every value survives as text ("005" stays "005", dates stay strings) and nothing repeats.
    assert sorted(got, key=lambda e: e.prompt) == sorted(
        (Example(r["question"], r["answer"]) for r in ROWS), key=lambda e: e.prompt
    )
    assert load_splits(_file_cfg(path)) == splits
    assert load_splits(_file_cfg(path, seed=1)) != splits
    capped = load_splits(_file_cfg(path, n_train=7, n_test=2))
    assert [len(v) for v in capped.values()] == [7, 5, 2]
    assert set(capped["train"]) <= set(splits["train"])


def test_separate_split_files_are_used_as_given(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", ROWS[:30])
    val = _write(tmp_path / "val.csv", ROWS[30:40])
    test = _write(tmp_path / "test.parquet", ROWS[40:])
    cfg = _file_cfg(train, validation_path=str(val), test_path=str(test), n_test=4)
    splits = load_splits(cfg)
    assert [len(v) for v in splits.values()] == [30, 10, 4]
    assert {e.prompt for e in splits["validation"]} == {r["question"] for r in ROWS[30:40]}
    assert {e.prompt for e in splits["test"]} <= {r["question"] for r in ROWS[40:]}
    # Only the test file given: validation is carved from the train file by its fraction.
    splits = load_splits(_file_cfg(train, test_path=str(test), split_fractions=[0.9, 0.1, 0.0]))
    assert [len(v) for v in splits.values()] == [27, 3, 10]


class _FakeSplit:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.column_names = rows, list(rows[0])

    def __getitem__(self, column: str) -> list[Any]:
        return [r[column] for r in self.rows]


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load: Any) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hf_dataset_splits_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(name: str, config: str | None) -> dict[str, _FakeSplit]:
        calls.append((name, config))
        return {"train": _FakeSplit(ROWS[:40]), "test": _FakeSplit(ROWS[40:])}

    _fake_datasets(monkeypatch, load)
    d = {"name": "hf", "hf_name": "org/qa", "hf_config": "main", "n_train": None, "n_validation": None}
    cfg = DataConfig.from_dict(d | {"n_test": None, "prompt_field": "question", "response_field": "answer"})
    splits = load_splits(cfg)
    assert calls == [("org/qa", "main")]
    assert [len(v) for v in splits.values()] == [36, 4, 10]  # validation carved 1/9 of 40
    assert {e.prompt for e in splits["test"]} == {r["question"] for r in ROWS[40:]}


# --- every user mistake: one line naming key and value ----------------------------------------


def _hub_down(name: str, config: str | None) -> None:
    raise ConnectionError(f"Couldn't reach\n'{name}' on the Hub (LocalEntryNotFoundError)")


def _bad_file(tmp: Path, name: str, content: bytes | str | list[dict[str, Any]], **kw: Any) -> dict:
    path = tmp / name
    if isinstance(content, list):
        _write(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return {"name": "file", "path": str(path)} | kw


FILE_CASES = {
    "missing file": (lambda t: {"name": "file", "path": str(t / "nope.jsonl")}, "data.path", "no such file"),
    "directory": (lambda t: {"name": "file", "path": str(t)}, "data.path", "not a file"),
    "empty file": (lambda t: _bad_file(t, "e.jsonl", ""), "data.path", "empty"),
    "header only": (lambda t: _bad_file(t, "h.csv", "prompt,response\n"), "data.path", "no rows"),
    "unknown extension": (lambda t: _bad_file(t, "d.txt", "x"), "data.path", "data.format"),
    "bad json line": (
        lambda t: _bad_file(t, "b.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": \n'),
        "data.path",
        "line 2",
    ),
    "json not object": (lambda t: _bad_file(t, "l.jsonl", "[1, 2]\n"), "data.path", "line 1"),
    "bad csv": (lambda t: _bad_file(t, "b.csv", "prompt,response\na,b\nc,d,e\n"), "data.path", "line 3"),
    "bad parquet": (lambda t: _bad_file(t, "b.parquet", b"PAR1 not really"), "data.path", "parquet"),
    "not utf-8": (lambda t: _bad_file(t, "u.jsonl", b'{"prompt": "\xff"}\n'), "data.path", "UTF-8"),
    "missing prompt field": (
        lambda t: _bad_file(t, "f.jsonl", ROWS[:3], prompt_field="q", response_field="answer"),
        "data.prompt_field",
        "['question', 'answer']",
    ),
    "missing response field": (
        lambda t: _bad_file(t, "f.csv", ROWS[:3], prompt_field="question"),
        "data.response_field",
        "['question', 'answer']",
    ),
    "empty csv cell": (
        lambda t: _bad_file(t, "n.csv", "prompt,response\na,b\nc,\n"),
        "data.response_field",
        "row 2",
    ),
    "number in jsonl": (
        lambda t: _bad_file(t, "n.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": 7, "response": "c"}'),
        "data.prompt_field",
        "row 2",
    ),
    "null in parquet": (
        lambda t: _bad_file(
            t, "n.parquet", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}]
        ),
        "data.response_field",
        "row 2",
    ),
    "missing key in jsonl": (
        lambda t: _bad_file(t, "k.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n'),
        "data.response_field",
        "row 2",
    ),
    "too few rows to split": (
        lambda t: _bad_file(t, "s.jsonl", [{"prompt": "a", "response": "b"}] * 3),
        "data.path",
        "too few",
    ),
}

CONFIG_CASES = {
    "unknown task": ({"name": "poetry"}, "data.name", "poetry"),
    "unknown key": ({"name": "dates", "n_trian": 5}, "data.n_trian", 5),
    "zero count": ({"name": "dates", "n_train": 0}, "data.n_train", 0),
    "string count": ({"name": "dates", "n_test": "10"}, "data.n_test", "10"),
    "bool count": ({"name": "dates", "n_validation": True}, "data.n_validation", True),
    "null count for task": ({"name": "arithmetic", "n_train": None}, "data.n_train", None),
    "negative max_length": ({"name": "dates", "max_length": -1}, "data.max_length", -1),
    "float seed": ({"name": "dates", "seed": 1.5}, "data.seed", 1.5),
    "bad format": ({"name": "file", "path": "x", "format": "xml"}, "data.format", "xml"),
    "fractions sum": (
        {"name": "file", "path": "x", "split_fractions": [0.5, 0.1, 0.1]},
        "data.split_fractions",
        [0.5, 0.1, 0.1],
    ),
    "fractions length": (
        {"name": "file", "path": "x", "split_fractions": [1.0]},
        "data.split_fractions",
        [1.0],
    ),
    "zero test fraction": (
        {"name": "file", "path": "x", "split_fractions": [0.9, 0.1, 0]},
        "data.split_fractions",
        [0.9, 0.1, 0],
    ),
    "path for a task": ({"name": "dates", "path": "my.jsonl"}, "data.path", "my.jsonl"),
    "hf_name for file": ({"name": "file", "path": "x", "hf_name": "a/b"}, "data.hf_name", "a/b"),
    "file without path": ({"name": "file"}, "data.path", None),
    "hf without name": ({"name": "hf"}, "data.hf_name", None),
    "empty field name": ({"name": "file", "path": "x", "prompt_field": ""}, "data.prompt_field", ""),
    "task options not a mapping": (
        {"name": "arithmetic", "task_options": [2, 3]},
        "data.task_options",
        [2, 3],
    ),
    **{
        f"task option {case}": (
            {"name": name, "task_options": {key: value}},
            f"data.task_options.{key}",
            value,
        )
        for case, (name, key, value) in {
            "unknown": ("arithmetic", "carry", True),
            "for a task without options": ("dates", "digits", [1, 2]),
            "for a file": ("file", "digits", [1, 2]),
            "digits reversed": ("arithmetic", "digits", [3, 2]),
            "digits zero": ("arithmetic", "digits", [0, 2]),
            "digits too many": ("arithmetic", "digits", [2, 10]),
            "digits one number": ("arithmetic", "digits", 3),
            "digits three numbers": ("arithmetic", "digits", [1, 2, 3]),
            "digits string": ("arithmetic", "digits", "2-3"),
            "digits float": ("arithmetic", "digits", [1.0, 2]),
            "digits bool": ("arithmetic", "digits", [True, 2]),
            "ops empty": ("arithmetic", "ops", ""),
            "ops times": ("arithmetic", "ops", "*"),
            "ops repeated": ("arithmetic", "ops", "++"),
            "ops list": ("arithmetic", "ops", ["+"]),
            "conditions reversed": ("sql", "conditions", [2, 1]),
            "conditions too many": ("sql", "conditions", [0, 3]),
            "conditions negative": ("sql", "conditions", [-1, 1]),
            "conditions one number": ("sql", "conditions", 1),
            "conditions bool": ("sql", "conditions", [False, True]),
            "conditions string": ("sql", "conditions", "0-2"),
            "aggregates string": ("sql", "aggregates", "yes"),
            "aggregates int": ("sql", "aggregates", 1),
            "unknown for sql": ("sql", "digits", [1, 2]),
            "negation string": ("sentiment", "negation", "false"),
            "negation null": ("sentiment", "negation", None),
            "unknown for sentiment": ("sentiment", "intensifiers", True),
        }.items()
    },
}


def _assert_config_error(err: ConfigError, key: str, value: Any) -> None:
    assert err.key == key and err.value == value
    assert str(err).startswith(f"{key}={value!r}: ")
    assert "\n" not in str(err) and len(str(err)) < 400


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file_raises_config_error(tmp_path: Path, case: str) -> None:
    make, key, hint = FILE_CASES[case]
    d = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_splits(DataConfig.from_dict(d))
    # Field errors name the configured column; everything else names the file.
    value = d.get(key[5:], key[5:-6]) if key.endswith("_field") else d["path"]
    _assert_config_error(err.value, key, value)
    assert hint in str(err.value)


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_raises_config_error(case: str) -> None:
    d, key, value = CONFIG_CASES[case]
    with pytest.raises(ConfigError) as err:
        DataConfig.from_dict(d)
    _assert_config_error(err.value, key, value)


@pytest.mark.parametrize("load", [None, _hub_down], ids=["not installed", "hub down"])
def test_hf_failures_raise_config_error(monkeypatch: pytest.MonkeyPatch, load: Any) -> None:
    if load is None:
        monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    else:
        _fake_datasets(monkeypatch, load)
    with pytest.raises(ConfigError) as err:
        load_splits(DataConfig.from_dict({"name": "hf", "hf_name": "org/qa"}))
    _assert_config_error(err.value, "data.hf_name", "org/qa")
    assert ("pip install datasets" if load is None else "Couldn't reach 'org/qa'") in str(err.value)
