"""The report's numbers, recomputed by hand with scipy, against a synthetic recorded study."""

from __future__ import annotations

import math
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats as st

from ablate.errors import ConfigError
from ablate.report import build_report, stats
from ablate.report.collect import StudyData, collect
from ablate.report.summary import summarise
from tests.report_fixtures import COSTS, EVAL_STEPS, TEST_EM, TEST_LOSS, val_loss_curve, write_study

A, B = [0.60, 0.62, 0.65], [0.55, 0.57, 0.56]
ARMS = ["lora+adapter", "lora+prefix", "matched-lora"]


def hand_interval(x: list[float]) -> tuple[float, float, float]:
    n, m = len(x), float(np.mean(x))
    half = st.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / math.sqrt(n)
    return m, m - half, m + half


def hand_welch(a: list[float], b: list[float]) -> dict[str, float]:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    diff = float(np.mean(a) - np.mean(b))
    half = st.t.ppf(0.975, df) * se
    return {
        "diff": diff,
        "lo": diff - half,
        "hi": diff + half,
        "p": 2 * st.t.sf(abs(diff / se), df),
        "df": df,
    }


def hand_holm(p: list[float]) -> list[float]:
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("study")
    rec = write_study(root)
    mo = write_study(
        root / "mo",
        "demo_mo",
        arms=("lora", "lora+adapter"),
        seeds=(0,),
        mlflow=False,
        multi_objective=True,
        storage=rec.storage,
    )
    return rec, mo


@pytest.fixture(scope="module")
def report(recorded, tmp_path_factory):
    rec, _ = recorded
    return build_report(rec.name, rec.storage, rec.tracking_uri, tmp_path_factory.mktemp("report"))


# --- statistics on fixed numbers --------------------------------------------------------------


def test_t_interval_matches_hand_computation():
    iv = stats.t_interval(A)
    assert (iv.mean, iv.lo, iv.hi) == pytest.approx(hand_interval(A), abs=1e-12)
    assert iv.n == 3


def test_welch_matches_hand_computation():
    c, h = stats.welch(A, B), hand_welch(A, B)
    assert c.status == stats.OK
    assert (c.diff, c.lo, c.hi, c.p, c.df) == pytest.approx(
        (h["diff"], h["lo"], h["hi"], h["p"], h["df"]), abs=1e-10
    )
    assert c.p == pytest.approx(st.ttest_ind(A, B, equal_var=False).pvalue)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # step-down keeps monotone: 0.04 -> max(0.06, 0.04)
        ([0.5, 0.6], [1.0, 1.0]),  # capped at 1
        ([0.02, math.nan, 0.001], [0.02, math.nan, 0.002]),  # untested arms stay out of the family
        ([0.2], [0.2]),
    ],
)
def test_holm_matches_hand_computation(p, expected):
    assert stats.holm(p) == pytest.approx(expected, nan_ok=True)
    finite = [x for x in p if not math.isnan(x)]
    assert [x for x in stats.holm(p) if not math.isnan(x)] == pytest.approx(hand_holm(finite))


@pytest.mark.parametrize(
    ("a", "b", "status", "diff"),
    [
        ([0.6], [0.5, 0.55], stats.FEW_SEEDS, 0.075),
        ([0.6, 0.7], [0.5], stats.FEW_SEEDS, 0.15),
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], stats.IDENTICAL, 0.0),
        ([1.0, 1.0], [0.5, 0.5, 0.5], stats.NO_SPREAD, 0.5),
        ([], [0.5, 0.6], stats.NO_DATA, math.nan),
    ],
)
def test_welch_refuses_undefined_cases(a, b, status, diff):
    c = stats.welch(a, b)
    assert c.status == status and not c.tested
    assert c.diff == pytest.approx(diff, nan_ok=True)
    assert math.isnan(c.p)
    if status == stats.FEW_SEEDS:
        assert math.isnan(c.lo) and math.isnan(c.hi)


def test_constant_sample_has_zero_width_interval_and_one_seed_none():
    assert stats.t_interval([1.0, 1.0, 1.0]) == stats.Interval(1.0, 1.0, 1.0, 3)
    one = stats.t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.lo) and one.n == 1


def test_pareto_front_keeps_only_undominated_points():
    cost, metric = [10, 20, 5, 30, 20], [0.5, 0.7, 0.4, 0.6, 0.8]
    assert sorted(stats.pareto_front(cost, metric)) == [0, 2, 4]


# --- the report against the recorded study ----------------------------------------------------


def test_summary_numbers_match_recorded_replicates(report):
    s = pd.read_csv(report / "summary.csv").set_index("arm")
    assert list(s.index) == ["lora", *ARMS]
    for arm, em in TEST_EM.items():
        assert (s.loc[arm, "em_mean"], s.loc[arm, "em_lo"], s.loc[arm, "em_hi"]) == pytest.approx(
            hand_interval(em)
        )
        lo_hi = hand_interval(TEST_LOSS[arm])
        assert (s.loc[arm, "loss_mean"], s.loc[arm, "loss_lo"], s.loc[arm, "loss_hi"]) == pytest.approx(lo_hi)
        tp, step, mem, tok, wall = COSTS[arm]
        assert s.loc[arm, ["trainable_params", "tokens_per_s", "wall_s"]].tolist() == pytest.approx(
            [tp, tok, wall]
        )
        assert s.loc[arm, "params_ratio"] == pytest.approx(tp / COSTS["lora"][0])
        assert s.loc[arm, "step_time_ratio"] == pytest.approx(step / COSTS["lora"][1])
        assert s.loc[arm, "mem_ratio"] == pytest.approx(mem / COSTS["lora"][2])
    hands = {arm: hand_welch(TEST_EM[arm], TEST_EM["lora"]) for arm in ARMS}
    adjusted = hand_holm([hands[a]["p"] for a in ARMS])
    for arm, p_adj in zip(ARMS, adjusted, strict=True):
        h = hands[arm]
        got = s.loc[arm, ["delta_diff", "delta_lo", "delta_hi", "delta_p", "delta_p_adj"]].tolist()
        assert got == pytest.approx([h["diff"], h["lo"], h["hi"], h["p"], p_adj])
    counts = s[["trials_complete", "trials_pruned", "trials_failed"]]
    assert counts.loc["lora"].tolist() == [5, 1, 1]
    assert counts.loc["lora+prefix"].tolist() == [3, 1, 1]
    assert counts.loc["matched-lora"].tolist() == [0, 0, 0]


def test_verdict_states_the_computed_numbers(report):
    md = (report / "report.md").read_text()
    verdict = md.split("## Verdict")[1].split("## Arms")[0]
    hands = {arm: hand_welch(TEST_EM[arm], TEST_EM["lora"]) for arm in ARMS}
    p_adj = dict(zip(ARMS, hand_holm([hands[a]["p"] for a in ARMS]), strict=True))
    h = hands["lora+adapter"]
    assert p_adj["lora+adapter"] < 0.05 < p_adj["lora+prefix"]
    assert (
        f"lora+adapter: {100 * h['diff']:+.1f} EM vs LoRA-only (95% CI {100 * h['lo']:+.1f}..{100 * h['hi']:+.1f}, "
        f"Holm-adjusted p={p_adj['lora+adapter']:.3f}), at 1.60x trainable params, 1.20x step time, 1.10x peak memory."
    ) in verdict
    h = hands["lora+prefix"]
    assert (
        f"lora+prefix: {100 * h['diff']:+.1f} EM vs LoRA-only, not a significant difference at alpha=0.05 "
        f"(95% CI {100 * h['lo']:+.1f}..{100 * h['hi']:+.1f}, Holm-adjusted p={p_adj['lora+prefix']:.3f})"
    ) in verdict
    assert "matched-lora (LoRA r=32, parameter-matched to lora+adapter, 1.01x the trainable params" in verdict
    m = hand_welch(TEST_EM["lora+adapter"], TEST_EM["matched-lora"])
    assert f"lora+adapter vs matched-lora (same parameter budget): {100 * m['diff']:+.1f} EM" in verdict
    assert f"unadjusted p={m['p']:.3f}" in verdict
    ko = 100 * (np.mean([0.20, 0.22, 0.21]) - np.mean(TEST_EM["lora+adapter"]))
    assert f"lora {ko:+.1f}" in verdict
    assert "Significantly better than LoRA-only at alpha=0.05 after Holm: lora+adapter." in verdict
    base = hand_interval(TEST_EM["lora"])
    assert (
        f"test EM {100 * base[0]:.1f} (95% CI {100 * base[1]:.1f}..{100 * base[2]:.1f}) over 3 seeds"
        in verdict
    )
    assert "nan" not in md.lower()


def test_table_has_one_row_per_arm_with_recorded_values(report):
    table = (report / "report.md").read_text().split("## Arms")[1].split("## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| lora") or line.startswith("| matched")]
    assert [r.split("|")[1].strip() for r in rows] == ["lora", *ARMS]
    adapter = rows[1]
    em = hand_interval(TEST_EM["lora+adapter"])
    assert f"{100 * em[0]:.1f} ± {100 * (em[2] - em[1]) / 2:.1f}" in adapter
    assert "160,000" in adapter and "1.600" in adapter and "5/1/1" in adapter
    assert "lora: r=8, lr=0.0003; adapter: width=16" in adapter
    assert "| baseline " in rows[0]


def test_trials_csv_has_every_trial_with_its_state(recorded, report):
    rec, _ = recorded
    df = pd.read_csv(report / "trials.csv")
    assert list(zip(df["arm"], df["number"], df["state"], strict=True)) == rec.trials
    assert len(df) == 7 + 7 + 5
    assert {"params.lora.r", "params.lora.lr", "params.adapter.width", "params.prefix.length"} <= set(
        df.columns
    )
    assert df.loc[df["state"] == "pruned", "reason"].str.contains("pruned").all()
    assert df.loc[df["state"] == "failed", "reason"].str.contains("OOM").all()
    done = df[df["state"] == "complete"]
    assert (done["value.val_loss"] == done["metrics.val_loss"]).all()
    assert done["mlflow_run_id"].tolist() == [
        rec.trial_run_ids[(a, "search", n)] for a, n in zip(done["arm"], done["number"], strict=True)
    ]


def test_html_is_self_contained_with_every_figure(report):
    html = (report / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    pngs = sorted((report / "figures").glob("*.png"))
    assert (
        len(srcs) == len(pngs) == 1 + 3 + 1 + 1 + 1 + 1
    )  # params, 3 histories, importance, curves, overhead, knockout
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "lora+prefix: skipped (3 complete trial(s), fewer than 4)" in html
    assert "matched-lora has no complete search trials" in html
    md = (report / "report.md").read_text()
    assert all(f"figures/{p.name}" in md for p in pngs)


def test_learning_curves_come_from_mlflow_histories(recorded):
    rec, _ = recorded
    data = collect(rec.name, rec.storage, rec.tracking_uri)
    assert data.curves_note == ""
    for (arm, seed), g in data.curves.groupby(["arm", "seed"]):
        assert g["step"].tolist() == list(EVAL_STEPS)
        assert g["val_loss"].tolist() == pytest.approx(val_loss_curve(arm, seed))
        assert g["run_id"].iloc[0] == rec.trial_run_ids[(arm, "replicate", seed)]
    assert data.curves.groupby(["arm", "seed"]).ngroups == 12


def test_importance_is_optunas(recorded, report):
    rec, _ = recorded
    study = optuna.load_study(study_name=f"{rec.name}/lora+adapter", storage=rec.storage)
    ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
    imp = optuna.importance.get_param_importances(study, evaluator=ev)
    md = (report / "report.md").read_text()
    for name, value in imp.items():
        assert f"| lora+adapter | {name} " in md and f"{value:.3f}" in md


def test_fewer_than_two_seeds_gives_no_ci_and_no_p(recorded, tmp_path):
    _, mo = recorded
    out = build_report(mo.name, mo.storage, None, tmp_path / "mo")
    md = (out / "report.md").read_text()
    verdict = md.split("## Verdict")[1].split("## Arms")[0]
    assert "Baseline lora: test EM 55.0 from 1 seed (no CI with one seed)." in verdict
    diff = 100 * (TEST_EM["lora+adapter"][0] - TEST_EM["lora"][0])
    assert (
        f"lora+adapter: {diff:+.1f} EM vs LoRA-only from 1 vs 1 seed(s); "
        "fewer than 2 seeds in an arm, so no CI and no p-value, at 1.60x trainable params"
    ) in verdict
    assert "95% CI" not in verdict and "p=" not in verdict
    assert "No arm is significantly better" in verdict
    assert "No tracking URI given, so no learning curves" in md
    assert f"{diff:+.1f} (<2 seeds: no CI, no p)" in md
    assert "nan" not in md.lower()
    trials = pd.read_csv(out / "trials.csv")  # the multi-objective arms: both objective values per trial
    assert {"value.val_em", "value.trainable_params"} <= set(trials.columns)


def test_identical_arms_are_called_identical_not_nan():
    arms = pd.DataFrame(
        [
            {"arm": a, "matched_to": None, "best_config": {}, "objective": ["val_loss"]}
            for a in ("lora", "lora+adapter")
        ]
    ).set_index("arm", drop=False)
    reps = pd.DataFrame(
        [{"arm": a, "seed": s, "test_em": 1.0} for a in ("lora", "lora+adapter") for s in range(3)]
    )
    data = StudyData("same", arms, pd.DataFrame(columns=["arm", "number", "state"]), reps)
    s = summarise(data)
    assert s.comparisons["lora+adapter"].status == stats.IDENTICAL
    line = next(v for v in s.verdict if v.startswith("lora+adapter"))
    assert "identical to LoRA-only on every seed (3 vs 3 seeds): a difference of 0 with no spread" in line
    assert "nan" not in " ".join(s.verdict).lower()


def test_user_errors_name_the_key_and_write_nothing(recorded, tmp_path):
    rec, _ = recorded
    out = tmp_path / "never"
    cases = [
        (("nope", rec.storage, None, out), {}, "study"),
        ((rec.name, f"sqlite:///{tmp_path / 'missing.db'}", None, out), {}, "study.storage"),
        ((rec.name, rec.storage, None, out), {"baseline": "lora@nf4"}, "baseline"),
        ((rec.name, rec.storage, None, out), {"alpha": 1.5}, "alpha"),
    ]
    for args, kwargs, key in cases:
        with pytest.raises(ConfigError) as err:
            build_report(*args, **kwargs)
        assert err.value.key == key
    assert not out.exists() and not (tmp_path / "missing.db").exists()


def test_study_without_replicates_yet_still_reports(recorded, tmp_path):
    rec, _ = recorded
    running = write_study(
        tmp_path / "r", "running", arms=("lora", "lora+adapter"), seeds=(), mlflow=False, storage=rec.storage
    )
    out = build_report(running.name, running.storage, None, tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "Baseline lora: no replicate seeds recorded yet." in md
    assert "lora+adapter: no replicate seeds recorded yet, so no comparison." in md
    assert len(pd.read_csv(out / "trials.csv")) == 14 and "nan" not in md.lower()
