"""Secrets never leave: one redaction (URL parsing, not a regex over the password) used by every
printer and recorder, checked over a table of URLs and then across every output of a real study:
stdout, stderr, MLflow params, tags and artifacts, the report files, and the Optuna storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ablate.errors import redact
from tests.test_cli import override, run_cli
from tests.test_robust import ONE_ARM
from tests.test_study import fresh_databases

# (url, what must not appear, what must stay visible)
URLS = [
    ("postgresql://postgres:ab/s3cr3t@127.0.0.1:5432/test", "s3cr3t", "postgres:***@127.0.0.1:5432/test"),
    ("postgresql://postgres:a@s3cr3t@127.0.0.1/db", "s3cr3t", "postgres:***@127.0.0.1/db"),
    ("mysql://u:pa:s3cr3t@h/db", "s3cr3t", "u:***@h/db"),
    ("postgresql+psycopg://u:p%40s3cr3t%2F@h:5432/db", "s3cr3t", "u:***@h:5432/db"),
    ("https://user:tok3n@127.0.0.1:1/", "tok3n", "user:***@127.0.0.1:1/"),
    ("http://127.0.0.1:5000/?token=s3cr3t&x=1", "s3cr3t", "?token=***&x=1"),
    ("postgresql://u@h/db?sslmode=require&password=s3cr3t", "s3cr3t", "sslmode=require&password=***"),
    ("https://h/api?api_key=s3cr3t#frag", "s3cr3t", "api_key=***"),
    (
        "error: study.storag='postgresql://postgres:s3cr3t@127.0.0.1/test': unknown key",
        "s3cr3t",
        "postgres:***@",
    ),
]


@pytest.mark.parametrize("url,secret,shown", URLS)
def test_redaction_table(url: str, secret: str, shown: str):
    out = redact(url)
    assert secret not in out and shown in out, out
    assert redact({"study": {"storage": url}})["study"]["storage"] == out  # nested values too
    assert redact("s3cr3t", key="hf_token") == "***"  # a secret-looking key hides its value whole


def test_plain_urls_are_left_alone():
    for url in ("sqlite:///studies/x.db", "postgresql://root@127.0.0.1:5432/test", "http://127.0.0.1:5000"):
        assert redact(url) == url


@pytest.fixture
def two_databases():
    with fresh_databases(2) as names:
        yield names


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_a_study_with_passwords_in_both_urls_leaks_them_nowhere(tmp_path, monkeypatch, capsys, two_databases):
    """PostgreSQL here trusts local connections, so any password is accepted and a real study runs
    with one in its storage URL (holding a ``/``) and one in its tracking URL (a percent-escaped ``@``)."""
    monkeypatch.chdir(tmp_path)
    store_db, track_db = two_databases
    storage = f"postgresql://postgres:ab/s3cr3tS@127.0.0.1/{store_db}"
    tracking = f"postgresql://postgres:x%40s3cr3tT@127.0.0.1/{track_db}"
    args = override(ONE_ARM, "study.name=secrets", "study.report=true", f"study.storage={storage}")
    args += [f"tracking.uri={tracking}", "study.n_trials=2"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err[-2000:]
    seen = {"stdout": out, "stderr": err, "reports/": _files_text(tmp_path / "reports")}

    import optuna
    from mlflow import MlflowClient

    store = optuna.storages.RDBStorage(storage.replace("ab/s3cr3tS", "x"))
    dumps = []
    for summary in optuna.study.get_all_study_summaries(store):
        st = optuna.load_study(study_name=summary.study_name, storage=store)
        sid = store.get_study_id_from_name(summary.study_name)
        dumps.append(json.dumps([st.user_attrs, store.get_study_system_attrs(sid)], default=str))
        dumps += [json.dumps([t.user_attrs, t.system_attrs, t.params], default=str) for t in st.trials]
    seen["optuna storage"] = "\n".join(dumps)
    client = MlflowClient(tracking.replace("x%40s3cr3tT", "x"))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert runs, "the study recorded nothing in MLflow"
    seen["mlflow params and tags"] = json.dumps([[r.data.params, r.data.tags] for r in runs])
    art = tmp_path / "artifacts"
    for r in runs:
        client.download_artifacts(r.info.run_id, "", str(art / r.info.run_id))
    seen["mlflow artifacts"] = _files_text(art)
    assert "postgres:***@127.0.0.1" in seen["stdout"] + seen["mlflow params and tags"]
    for where, text in seen.items():
        assert "s3cr3t" not in text, f"a password reached {where}"

    # the echo of a misspelt key and --cfg job print the URL without its password too
    code, out, err = run_cli([*ONE_ARM, f"study.storag={storage}"], capsys)
    assert code == 2 and "s3cr3t" not in out + err and "postgres:***@" in err
    code, out, err = run_cli([*ONE_ARM, f"study.storage={storage}", "--cfg", "job"], capsys)
    assert "s3cr3t" not in out + err
