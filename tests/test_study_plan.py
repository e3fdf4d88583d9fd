"""A study is a fixed plan: recorded when it is created, checked on every later run. A change that
would mix results is refused with one line naming the key, its planned and its new value, exit 2,
and nothing written; the safe extensions (more seeds, a larger search before any best is pinned)
say so and go on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.test_cli import run_cli
from tests.test_robust import ONE_ARM

# (extra overrides on the second run, the key the line must name, planned value shown)
REFUSED = [
    (["model.tiny.num_hidden_layers=3"], "model.tiny.num_hidden_layers=3", "planned 2"),
    (["search.lora.r.low=32"], "search.lora.r.low=32", "planned 4"),
    (["study.sesoi=0.5"], "study.sesoi=0.5", "planned 0.02"),
    (["study.n_trials=1"], "study.n_trials=1", "planned 3"),
    (["study.objective=val_em"], "study.objective='val_em'", "planned 'val_loss'"),
    (["data.n_test=17"], "data.n_test=17", "planned"),
    (["study.startup_fraction=0.9"], "study.startup_fraction=0.9", "planned 0."),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_plan_is_checked_on_every_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = [a for a in ONE_ARM if not a.startswith("study.seeds=")]
    args = [*base, "study.seeds=1", "study.name=fixed", "tracking=none"]  # budget=smoke: 3 trials
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    db = tmp_path / "studies" / "fixed.db"
    before = _digest(db)
    for extra, named, planned_value in REFUSED:
        code, out, err = run_cli([*args, *extra], capsys)
        lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (extra, err)
        assert named in lines[0] and planned_value in lines[0], (extra, lines[0])
        assert _digest(db) == before, f"{extra}: the study file was written to"
    assert not (tmp_path / "reports").exists() and not (tmp_path / "mlflow.db").exists()
    # more seeds: an explicit extension, said and done
    code, out, err = run_cli([*base, "study.seeds=2", "study.name=fixed", "tracking=none"], capsys)
    assert code == 0 and "replicate seeds raised from 1 to 2" in out, err
    assert "over 2 seeds" in out


def test_the_extensions_and_their_limits():
    from ablate.cli import COMPONENTS, normalize_overrides, precompose
    from ablate.errors import ConfigError
    from ablate.study.plan import check_recorded, make_plan, record

    args = normalize_overrides(["peft=[" + ",".join(COMPONENTS) + "]", *ONE_ARM, "study.n_trials=2"])
    plan = make_plan(precompose(args), args)
    rec = record(plan)
    bigger = make_plan(precompose([*args[:-1], "study.n_trials=5"]), args)
    assert check_recorded(rec, bigger) == [
        "study lora_vs_adapter: search budget raised from 2 to 5 trials per arm"
    ]
    assert check_recorded(rec, plan) == []  # the same plan: nothing to say
    smaller = make_plan(precompose([*args[:-1], "study.n_trials=1"]), args)
    with pytest.raises(ConfigError, match="study.n_trials=1 gives lora 1 search trials \\(planned 2\\)"):
        check_recorded(rec, smaller)


def test_budgets_grow_with_searched_fields_and_old_plans_keep_their_count():
    from ablate.cli import COMPONENTS, normalize_overrides, precompose
    from ablate.errors import ConfigError
    from ablate.study.plan import check_recorded, make_plan, record

    two = ["study=lora_vs_adapter", "study.arms=[lora,lora+adapter]", "model=tiny", "study.matched=false"]
    two += ["study.factorial=false"]
    args = normalize_overrides(["peft=[" + ",".join(COMPONENTS) + "]", *two])
    per_field = make_plan(precompose(args), args)  # budget=default: 1.5 trials per searched field
    assert record(per_field)["budget.lora"] == 8 and record(per_field)["budget.lora+adapter"] == 12
    fixed = make_plan(precompose([*args, "study.n_trials=8"]), args)
    before = {k: v for k, v in record(fixed).items() if not k.startswith("budget.")}  # an older plan
    assert check_recorded(before, fixed) == []
    assert check_recorded(before, per_field) == [  # more for the arm that searches more: an extension
        "study lora_vs_adapter: search budget of lora+adapter raised from 8 to 12 trials"
    ]
    fewer = make_plan(precompose([*args, "study.trials_per_field=1"]), args)
    with pytest.raises(
        ConfigError, match="study.trials_per_field=1.0 gives lora 6 search trials \\(planned 8\\)"
    ):
        check_recorded(before, fewer)


def test_a_larger_search_re_pins_the_best_and_replicates_it_again(tmp_path, monkeypatch, capsys):
    """The README's advice for a search that may not have converged, on a finished study: the extra
    trials run, each arm's best is pinned again among all its trials and replicated in a study of its
    own; the earlier best and its replicates stay recorded, and the report says which it uses."""
    import optuna

    from tests.test_study import storage_studies

    monkeypatch.chdir(tmp_path)
    base = [a for a in ONE_ARM if not a.startswith("study.report=")]
    args = [*base, "study.name=grow", "tracking=none", "study.report=true"]
    code, _, err = run_cli(args, capsys)  # budget=smoke: 3 trials
    assert code == 0, err
    code, out, err = run_cli([*args, "study.n_trials=5"], capsys)
    assert code == 0, err
    assert "search budget raised from 3 to 5 trials per arm" in out
    studies = storage_studies("sqlite:///studies/grow.db")
    lora = studies["grow/lora"]
    assert len(lora.trials) == 5 and lora.user_attrs["n_trials"] == 5
    (old,) = lora.user_attrs["superseded"]
    assert old["n_trials"] == 3 and old["replicate_study"] == "grow/lora/replicate" and old["replicates"]
    values = [t.value for t in lora.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(
        range(len(lora.trials)),
        key=lambda n: lora.trials[n].value if lora.trials[n].value is not None else 1e9,
    )
    assert lora.user_attrs["best_trial"] == best and min(values) == lora.trials[best].value
    assert [t.params["seed"] for t in studies["grow/lora/replicate.2"].trials] == [1]  # replicated anew
    assert [t.params["seed"] for t in studies["grow/lora/replicate"].trials] == [1]  # the earlier, kept
    md = (tmp_path / "reports" / "grow" / "report.md").read_text()
    assert "lora: the search was extended beyond 3 trials; its best was trial" in md
    assert "the earlier best's replicates stay recorded in grow/lora/replicate." in md


def test_a_report_reads_and_never_creates(tmp_path, monkeypatch, capsys):
    """``ablate report`` on a 0-byte file does not write Optuna's schema into it, and without an
    MLflow store it reads the study storage alone instead of creating mlflow.db."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.db").write_bytes(b"")
    code, _, err = run_cli(["report", "study=lora_vs_adapter", "study.storage=sqlite:///empty.db"], capsys)
    assert code == 2 and "empty.db is empty: not a study database" in err
    assert (tmp_path / "empty.db").stat().st_size == 0
    code, _, err = run_cli([*ONE_ARM, "study.name=r", "tracking=none"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["report", "study=lora_vs_adapter", "study.name=r"], capsys)
    assert code == 0 and f"no MLflow store at sqlite:///{tmp_path}/mlflow.db" in err, err
    assert not (tmp_path / "mlflow.db").exists() and (tmp_path / "reports" / "r" / "report.md").exists()
