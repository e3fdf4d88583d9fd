"""ablate compare: the verdict on per-item results made elsewhere, from lm-evaluation-harness
--log_samples files (its 0.4 format: one JSON line per document and filter, each metric under its
own name, as lm_eval/evaluator.py writes them) or from plain arm/seed/item/score tables."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate import stats
from tests.test_cli import run_cli

P = {"lora": 0.35, "lora+adapter": 0.55}


def sample_line(doc_id: int, em: float, flt: str = "none") -> str:
    return json.dumps(
        {
            "doc_id": doc_id,
            "doc": {"question": f"What is {doc_id} + 7?", "answer": str(doc_id + 7)},
            "target": str(doc_id + 7),
            "arguments": {
                "gen_args_0": {
                    "arg_0": f"What is {doc_id} + 7?",
                    "arg_1": {"until": ["\n"], "do_sample": False},
                }
            },
            "resps": [[str(doc_id + 7) if em else "0"]],
            "filtered_resps": [str(doc_id + 7) if em else "0"],
            "filter": flt,
            "metrics": ["exact_match"],
            "doc_hash": f"{doc_id:064x}",
            "prompt_hash": f"{doc_id + 1:064x}",
            "target_hash": f"{doc_id + 2:064x}",
            "exact_match": em,
        }
    )


def write_runs(root: Path, seeds=(1, 2, 3), items=30, filters=("none",), task="add7") -> pd.DataFrame:
    """One lm_eval run per arm and seed: DIR/<arm>/seed<k>/<model>/samples_<task>_<date>.jsonl."""
    rng = random.Random(1)
    rows = []
    for arm, p in P.items():
        for seed in seeds:
            d = root / arm / f"seed{seed}" / f"exports__{arm.replace('+', '_')}"
            d.mkdir(parents=True, exist_ok=True)
            lines = []
            for doc_id in range(items):
                em = float(rng.random() < p)
                rows.append((arm, seed, doc_id, em))
                lines += [sample_line(doc_id, em, f) for f in filters]
            (d / f"samples_{task}_2026-12-07T06-00-00.000001.jsonl").write_text("\n".join(lines) + "\n")
    return pd.DataFrame(rows, columns=["arm", "seed", "item", "score"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lm_eval_samples_give_the_verdict_by_hand(workdir, capsys):
    truth = write_runs(workdir / "runs")
    code, out, err = run_cli(["compare", "lm_eval=runs", "metric=exact_match", "baseline=lora"], capsys)
    assert code == 0, err
    m = {a: g.pivot(index="seed", columns="item", values="score").to_numpy() for a, g in truth.groupby("arm")}
    want = stats.compare(m["lora+adapter"], m["lora"], metric="em", sesoi=0.02, alpha=0.05)
    s = pd.read_csv(workdir / "reports" / "compare" / "summary.csv").set_index("arm")
    got = s.loc["lora+adapter"]
    assert (got["delta_diff"], got["delta_lo"], got["delta_hi"]) == pytest.approx(
        (want.diff, want.lo, want.hi)
    )
    assert got["delta_verdict"] == want.verdict and got["delta_p_adj"] == pytest.approx(
        want.p
    )  # a family of one
    assert s.loc["lora", "em_mean"] == pytest.approx(np.mean(m["lora"]))
    assert "baseline lora: 1 arm(s) compared over 3 seed(s) x 30 item(s)" in out
    report = workdir / "reports" / "compare"
    assert {"report.md", "report.html", "table.tex", "table.md"} <= {p.name for p in report.iterdir()}
    head = (report / "report.md").read_text()
    assert "EM is lm-evaluation-harness's `exact_match` per sample (--log_samples)" in head
    assert "exact match on the test split" not in head  # a study's words, not these results'
    # the same results as a plain table, in each format, give the same numbers
    for ext in ("csv", "jsonl", "parquet"):
        path = workdir / f"results.{ext}"
        if ext == "csv":
            truth.to_csv(path, index=False)
        elif ext == "jsonl":
            truth.to_json(path, orient="records", lines=True)
        else:
            truth.to_parquet(path)
        code, _, err = run_cli(["compare", f"table={path}", "baseline=lora", f"out=t_{ext}"], capsys)
        assert code == 0, err
        t = pd.read_csv(workdir / f"t_{ext}" / "summary.csv").set_index("arm").loc["lora+adapter"]
        assert (t["delta_diff"], t["delta_lo"], t["delta_hi"]) == pytest.approx((want.diff, want.lo, want.hi))


def _drop_seed(root: Path) -> None:
    for f in (root / "lora+adapter" / "seed3").rglob("*.jsonl"):
        f.unlink()
    (root / "lora+adapter" / "seed3" / "exports__lora_adapter").rmdir()
    (root / "lora+adapter" / "seed3").rmdir()


def _misalign(root: Path) -> None:
    f = next((root / "lora+adapter" / "seed2").rglob("*.jsonl"))
    f.write_text("\n".join(f.read_text().splitlines()[:-1]) + "\n")


def _second_task(root: Path) -> None:
    f = next((root / "lora" / "seed1").rglob("*.jsonl"))
    (f.parent / "samples_other_2026-12-07T06-00-00.000001.jsonl").write_text(f.read_text())


BAD = {  # case -> (how the inputs are broken, extra arguments, the line's start)
    "missing seed": (
        _drop_seed,
        [],
        "error: seed=3: arm lora+adapter has seeds [1, 2], the baseline lora [1, 2, 3]",
    ),
    "misaligned items": (_misalign, [], "error: item='29': arm lora+adapter seed 2 has 29 items"),
    "metric absent": (None, ["metric=acc"], "error: metric='acc': not in "),
    "several tasks": (_second_task, [], "error: task=None: "),
    "unknown baseline": (None, ["baseline=full"], "error: baseline='full': not among the arms"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_inputs_that_disagree_are_one_line_errors(workdir, capsys, case):
    breaks, extra, start = BAD[case]
    write_runs(workdir / "runs")
    if breaks is not None:
        breaks(workdir / "runs")
    args = {"metric": "exact_match", "baseline": "lora"} | dict(a.split("=", 1) for a in extra)
    code, out, err = run_cli(["compare", "lm_eval=runs", *(f"{k}={v}" for k, v in args.items())], capsys)
    assert code == 2 and err.startswith(start) and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "reports").exists()


def test_several_filters_need_one_chosen(workdir, capsys):
    write_runs(workdir / "runs", filters=("strict-match", "flexible-extract"))
    code, _, err = run_cli(["compare", "lm_eval=runs", "metric=exact_match", "baseline=lora"], capsys)
    assert code == 2 and "choose one, e.g. filter=flexible-extract" in err
    code, _, err = run_cli(
        ["compare", "lm_eval=runs", "metric=exact_match", "baseline=lora", "filter=strict-match"], capsys
    )
    assert code == 0, err


def test_scores_outside_zero_one_are_refused(workdir, capsys):
    pd.DataFrame({"arm": ["a", "b"], "seed": [1, 1], "item": [0, 0], "score": [0.5, 3.0]}).to_csv(
        "r.csv", index=False
    )
    code, _, err = run_cli(["compare", "table=r.csv", "baseline=a"], capsys)
    assert code == 2 and err.startswith("error: score=3.0: 1 score(s) outside [0, 1]")
