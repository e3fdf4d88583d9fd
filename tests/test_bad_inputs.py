"""One table of bad inputs across the CLI, configs, data files, search spaces, study names and
storage/tracking URLs. Each: one line on stderr naming the key and the value, exit code 2, no
traceback, and nothing written anywhere (no mlflow.db, no studies/, no reports/, no outputs/).

Run in this process through ``ablate.cli.main`` (a subprocess costs seconds each); a few run as real
processes at the end, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
S = "study=lora_vs_adapter"
# written by the fixture; everything else is a leak
DATA = ["empty.jsonl", "bad.jsonl", "fields.jsonl", "adir", "notdb.db"]

# (arguments, key the line must name, value it must show); model=tiny budget=smoke are added
BAD = [
    # -- one trial: components, quantisation, model, training
    (["train", "peft=lora+foo"], "peft", "foo"),
    (["train", "peft.lora.r=0"], "peft.lora.r", "0"),
    (["train", "peft.lora.alpha=-2"], "peft.lora.alpha", "-2"),
    (["train", "peft=adapter", "peft.adapter.width=0"], "peft.adapter.width", "0"),
    (["train", "peft=prefix", "peft.prefix.length=0"], "peft.prefix.length", "0"),
    (["train", "peft=prompt", "peft.prompt.length=-1"], "peft.prompt.length", "-1"),
    (
        ["train", "peft=prompt", "peft.prompt.length=200"],
        "peft.prompt.length",
        "200",
    ),  # 200 + 128 > 256 context
    (["train", "peft=lora+prefix", "peft.prefix.length=250"], "peft.prefix.length", "250"),
    (["train", "peft.lora.targets=[q_proj,foo_proj]"], "peft.lora.targets", "foo_proj"),
    (["train", "peft=lora", "peft.adapter.width=8"], "peft.adapter.width", "8"),
    (["train", "quant=int3"], "quant", "int3"),
    (["train", "model=nope"], "model", "nope"),
    (
        ["train", "model.source=pretrained", "model.name_or_path=/no/such/model"],
        "model.name_or_path",
        "/no/such/model",
    ),
    (["train", "train.steps=0"], "train.steps", "0"),
    (["train", "train.batch_size=0"], "train.batch_size", "0"),
    (["train", "train.precision=fp8"], "train.precision", "fp8"),
    (["train", "train.warmup_ratio=1.5"], "train.warmup_ratio", "1.5"),
    (["train", "train.fault.nan_at_step=0"], "train.fault.nan_at_step", "0"),
    (["train", "train.fault.oom_times=-1"], "train.fault.oom_times", "-1"),
    (["train", "train.fault.trials=[x]"], "train.fault.trials", "x"),
    (["train", "train.fault.bogus=1"], "train.fault.bogus", "1"),
    (["train", "bogus=1"], "bogus", "1"),
    (["train", "train.steps=[1,2"], "train.steps", "[1,2"),
    (["train", "eval.knockout=maybe"], "eval.knockout", "maybe"),
    (["train", "eval.knockout_items=0"], "eval.knockout_items", "0"),
    # -- tracking URLs: unreachable within seconds, secrets never shown
    (["train", "tracking.uri=http://127.0.0.1:1"], "tracking.uri", "http://127.0.0.1:1"),
    (["train", "tracking.uri=https://user:tok3n@127.0.0.1:1/"], "tracking.uri", "user:***@127.0.0.1:1"),
    (["train", "tracking.uri=sqlite:////no/such/dir/mlflow.db"], "tracking.uri", "/no/such/dir"),
    (["train", "tracking.uri=ftp://127.0.0.1/x"], "tracking.uri", "ftp://127.0.0.1/x"),
    (["train", "tracking.backend=wandb"], "tracking.backend", "wandb"),
    ([S, "tracking.uri=http://127.0.0.1:1"], "tracking.uri", "http://127.0.0.1:1"),
    ([S, "tracking.uri=postgresql://u:s3cret@127.0.0.1:1/db"], "tracking.uri", "u:***@127.0.0.1:1"),
    # -- data files
    (["train", "data=file", "data.path=@empty.jsonl"], "data.path", "empty.jsonl"),
    (["train", "data=file", "data.path=@bad.jsonl"], "data.path", "bad.jsonl"),
    (["train", "data=file", "data.path=@fields.jsonl"], "data.prompt_field", "prompt"),
    # -- studies: arms, budgets, search spaces, storage URLs
    (["study=nope"], "study", "nope"),
    (["study=lora_vs_adapter", "study.arms=[lora,lora+foo]"], "study.arms", "foo"),
    (["study=lora_vs_adapter", "study.baseline=lora+adapter"], "study.baseline", "lora+adapter"),
    (["study=lora_vs_adapter", "search.prefix.length.high=64"], "search.prefix.length.high", "64"),
    (["study=lora_vs_adapter", "search.lora.r.low=64", "search.lora.r.high=4"], "search.lora.r.low", "64"),
    (["study=lora_vs_adapter", "+search.lora.targets={choices:[]}"], "search.lora.targets.choices", "[]"),
    (["study=lora_vs_adapter", "study.n_trials=0"], "study.n_trials", "0"),
    (["study=lora_vs_prefix", "search.prefix.length.high=200"], "search.prefix.length.high", "200"),
    (["study=lora_vs_adapter", "data=file", "data.path=/no/such.jsonl"], "data.path", "/no/such.jsonl"),
    (["study=lora_vs_adapter", "study.seeds=-1"], "study.seeds", "-1"),
    (["study=lora_vs_adapter", "study.startup_fraction=0"], "study.startup_fraction", "0"),
    (["study=lora_vs_adapter", "study.factorial=maybe"], "study.factorial", "maybe"),
    (["study=lora_vs_adapter", "study.capacity_levels=[1,0]"], "study.capacity_levels", "0"),
    (
        ["study=lora_vs_prefix", "study.capacity_levels=[1,16]"],
        "study.capacity_levels",
        "x16 gives peft.prefix",
    ),
    (["study=lora_vs_adapter", "study.storage=notaurl"], "study.storage", "notaurl"),
    (["study=lora_vs_adapter", "study.storage=sqlite:////no/such/dir/x.db"], "study.storage", "/no/such/dir"),
    (
        ["study=lora_vs_adapter", "study.storage=postgresql://ablate:s3cret@127.0.0.1:1/nope"],
        "study.storage",
        "postgresql://ablate:***@127.0.0.1:1/nope",
    ),
    ([S, "study.storage=sqlite:///:memory:"], "study.storage", ":memory:"),
    (
        [S, "study.storage=postgresql://postgres:ab/s3cret@127.0.0.1:1/x"],
        "study.storage",
        "postgres:***@127.0.0.1:1",
    ),
    (
        [S, "study.storag=postgresql://postgres:s3cret@127.0.0.1/x"],
        "study.storag",
        "postgres:***@127.0.0.1/x",
    ),
    # -- stores that answer but cannot be used: refused in seconds, before any training
    ([S, "study.storage=sqlite:///adir"], "study.storage", "adir is a directory"),
    ([S, "study.storage=sqlite:///notdb.db"], "study.storage", "not an SQLite database"),
    (["train", "tracking.uri=sqlite:///notdb.db"], "tracking.uri", "not an SQLite database"),
    ([S, "tracking.uri=adir"], "tracking.uri", "not a tracking store MLflow 3 accepts"),
    (["train", "tracking.uri=databricks"], "tracking.uri", "not a tracking store MLflow 3 accepts"),
    ([S, "study.storage=redis://127.0.0.1:6379/0"], "study.storage", "must be an SQLAlchemy database URL"),
    ([S, "tracking.uri=postgresql://root@127.0.0.1:5432/nosuchdb"], "tracking.uri", "does not exist"),
    ([S, "tracking.uri=http://127.0.0.1:6379"], "tracking.uri", "does not answer as an MLflow tracking"),
    # -- found before the first trial or job, not when it is reached
    ([S, "search.lora.targets.choices=[attention,bogus]"], "search.lora.targets.choices", "'bogus'"),
    (["train", "-m", "train.steps=2,0"], "train.steps", "0"),
    # -- clear messages
    (["trian"], "command", "unknown command (one of train, study"),
    ([S, "study.sampler_seed=-1"], "study.sampler_seed", "-1"),
    ([S, "study.name=null"], "study.name", "a study needs a name"),
    ([S, "search.lora.dropout.high=1.5"], "search.lora.dropout.high", "1.5"),
    # -- a study is a set of arms, each split its own file, each key given once
    ([S, "study.arms=[lora,lora+adapter,adapter+lora]"], "study.arms", "lora+adapter, adapter+lora"),
    ([S, "study.n_trials=5", "study.n_trials=7"], "study.n_trials", "5 and 7"),
    (
        ["train", "data=file", "data.path=@bad.jsonl", "data.test_path=@bad.jsonl"],
        "data.test_path",
        "bad.jsonl",
    ),
    # an unparsable value is the argument blamed, not another whose value the message happens to hold
    ([S, "study.n_trials=2", "study.tasks=[a b"], "study.tasks", "cannot be parsed"),
    (["export", "study=lora_vs_adapter", "task=sql", "out=x"], "task", "the study has no study.tasks"),
    (["export", "study=task_dependence", "task=nope", "out=x"], "task", "name one of the study's tasks"),
    ([S, "workers=0"], "workers", "0"),
    ([S, "workers=-2"], "workers", "-2"),
    ([S, "workers=many"], "workers", "many"),
    ([S, "heartbeat.interval_s=0"], "heartbeat.interval_s", "0"),
    ([S, "heartbeat.grace_s=10"], "heartbeat.grace_s", "10"),
    ([S, "heartbeat.max_retry=x"], "heartbeat.max_retry", "x"),
    # -- study and arm names become paths, storage names and MLflow experiments
    ([S, "study.name=../../evil"], "study.name", "../../evil"),
    ([S, "study.name=a/b"], "study.name", "a/b"),
    ([S, "study.name=/tmp/abs"], "study.name", "/tmp/abs"),
    ([S, "study.name=..hidden"], "study.name", "..hidden"),
    ([S, "study.name=.hidden"], "study.name", ".hidden"),
    ([S, "study.name=ev\x01il"], "study.name", "ev\\x01il"),
    ([S, "study.name=a\\b"], "study.name", "a\\\\b"),
    ([S, "study.name=nan"], "study.name", "nan"),
    ([S, "study.name=" + "x" * 101], "study.name", "x" * 101),
    ([S, "study.arms=[lora,../x]"], "study.arms", "../x"),
    (["report", S, "study.name=../../evil"], "study.name", "../../evil"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", \n')
    rows = [json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(20)]
    (tmp_path / "fields.jsonl").write_text("\n".join(rows))
    (tmp_path / "adir").mkdir()
    (tmp_path / "notdb.db").write_text("not a database\n")
    return tmp_path


def _args(args: list[str], workdir: Path) -> list[str]:
    return [a.replace("@", f"{workdir}/") if re.match(r"data\.\w*path=@", a) else a for a in args]


def test_the_table_is_large_and_covers_every_kind():
    assert len(BAD) >= 40
    keys = {k.split(".")[0] for _, k, _ in BAD}
    assert {"peft", "train", "tracking", "data", "study", "search", "workers", "heartbeat", "model"} <= keys


@pytest.mark.parametrize("args,key,value", BAD, ids=[f"{b[1]}={b[2][:30]}" for b in BAD])
def test_bad_input(args, key, value, workdir, capsys):
    t0 = time.perf_counter()
    code, out, err = run_cli([*_args(args, workdir), "model=tiny", "budget=smoke"], capsys)
    took = time.perf_counter() - t0
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Failed to load CPU")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and key in lines[0] and value in lines[0], lines[0]
    assert "Traceback" not in err + out and "s3cret" not in err and "tok3n" not in err
    assert sorted(p.name for p in workdir.iterdir()) == sorted(DATA)  # nothing written, not even a directory
    if key == "tracking.uri":
        assert took < 10  # an unreachable server fails at once, not after MLflow's retries


@pytest.mark.parametrize(
    "args,line",
    [
        (["train", "peft=lora+bogus"], "error: peft='bogus': unknown component (known: "),
        ([S, "study.name=../../evil"], "error: study.name='../../evil': '..' is not allowed in a name"),
        (
            ["train", "tracking.uri=http://127.0.0.1:1"],
            "error: tracking.uri='http://127.0.0.1:1': cannot connect",
        ),
    ],
)
def test_as_a_real_process(args, line, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", *args, "model=tiny"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
