"""The report's numbers against a synthetic recorded study: recomputed from the recorded items."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest

from ablate import stats
from ablate.errors import ConfigError
from ablate.report import build_report
from ablate.report.collect import StudyData, collect
from ablate.report.summary import summarise
from ablate.stats import similarity
from tests.report_fixtures import (
    COSTS,
    EVAL_STEPS,
    INTERFERENCE,
    LORA_ALONE,
    N_ITEMS,
    RESEED,
    TEST_EM,
    item_outcomes,
    val_loss_curve,
    write_study,
)

ARMS = ["lora+adapter", "lora+prefix", "matched-lora"]
PRIMARY = ["lora+adapter", "lora+prefix"]  # each LoRA+X vs lora; matched-lora is a secondary control


def fixture_matrix(arm: str, key: str = "correct") -> np.ndarray:
    """Seeds x items as the fixture defines them (not read back from any storage)."""
    return np.array([item_outcomes(arm, seed)[key] for seed in range(3)], dtype=float)


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


# --- the report against the recorded study --------------------------------------------------


def test_summary_numbers_match_recorded_items(report):
    s = pd.read_csv(report / "summary.csv").set_index("arm")
    assert list(s.index) == ["lora", *ARMS]
    for arm in ["lora", *ARMS]:
        _, lo, hi = stats.interval(fixture_matrix(arm))
        assert s.loc[arm, "em_mean"] == pytest.approx(np.mean(TEST_EM[arm]))
        assert (s.loc[arm, "em_lo"], s.loc[arm, "em_hi"]) == pytest.approx((max(lo, 0), min(hi, 1)))  # a rate
        assert s.loc[arm, "em_lo"] < s.loc[arm, "em_mean"] < s.loc[arm, "em_hi"]
        assert s.loc[arm, "seeds"] == 3 and s.loc[arm, "items"] == N_ITEMS
        tp, step, mem, tok, wall = COSTS[arm]
        assert s.loc[arm, ["trainable_params", "tokens_per_s", "wall_s"]].tolist() == pytest.approx(
            [tp, tok, wall]
        )
        assert s.loc[arm, "params_ratio"] == pytest.approx(tp / COSTS["lora"][0])
        assert s.loc[arm, "step_time_ratio"] == pytest.approx(step / COSTS["lora"][1])
        assert s.loc[arm, "mem_ratio"] == pytest.approx(mem / COSTS["lora"][2])
    comps = {
        arm: stats.compare(fixture_matrix(arm), fixture_matrix("lora"), metric="em", sesoi=0.02)
        for arm in ARMS
    }
    comps = stats.holm_family(comps, PRIMARY)
    for arm, c in comps.items():
        got = s.loc[arm, ["delta_diff", "delta_lo", "delta_hi", "delta_p", "delta_tost_p"]].tolist()
        assert got == pytest.approx([c.diff, c.lo, c.hi, c.p, c.tost_p])
        assert s.loc[arm, "delta_verdict"] == c.verdict and bool(s.loc[arm, "primary"]) == (arm in PRIMARY)
    assert s.loc["lora+adapter", "delta_diff"] == pytest.approx(np.mean(TEST_EM["lora+adapter"]) - 0.56)
    assert s.loc["lora+adapter", "delta_p_adj"] == pytest.approx(comps["lora+adapter"].p_adj)
    assert np.isnan(s.loc["matched-lora", "delta_p_adj"])  # secondary: never Holm-adjusted
    # LoRA held fixed: Fisher-z means of the recorded cosines, by hand
    z_with, z_reseed = (
        np.arctanh(list(INTERFERENCE["lora+adapter"].values())),
        np.arctanh(list(RESEED["lora+adapter"].values())),
    )
    assert s.loc["lora+adapter", "interference_cos"] == pytest.approx(np.tanh(z_with.mean()))
    assert s.loc["lora+adapter", "interference_reseed_cos"] == pytest.approx(np.tanh(z_reseed.mean()))
    assert s.loc["lora+adapter", "interference_diff_z"] == pytest.approx(z_with.mean() - z_reseed.mean())
    alone = np.array(
        [
            item_outcomes("lora+adapter", seed, em)["correct"]
            for seed, em in enumerate(LORA_ALONE["lora+adapter"])
        ]
    )
    fixed = stats.compare(fixture_matrix("lora+adapter"), alone.astype(float), metric="em", sesoi=0.02)
    assert s.loc[
        "lora+adapter", ["fixed_lora_diff", "fixed_lora_lo", "fixed_lora_hi"]
    ].tolist() == pytest.approx([fixed.diff, fixed.lo, fixed.hi])
    assert fixed.diff == pytest.approx(0.71 - np.mean(LORA_ALONE["lora+adapter"]))
    loss = stats.compare(
        fixture_matrix("lora+adapter", "loss"), fixture_matrix("lora", "loss"), metric="loss", sesoi=0.02
    )
    assert s.loc[
        "lora+adapter", ["loss_delta_diff", "loss_delta_lo", "loss_delta_hi"]
    ].tolist() == pytest.approx([loss.diff, loss.lo, loss.hi])
    counts = s[["trials_complete", "trials_pruned", "trials_failed"]]
    assert counts.loc["lora"].tolist() == [5, 1, 1]
    assert counts.loc["lora+prefix"].tolist() == [3, 1, 1]
    assert counts.loc["matched-lora"].tolist() == [0, 0, 0]


def test_verdict_states_the_computed_numbers(report):
    md = (report / "report.md").read_text()
    verdict = md.split("## Verdict")[1].split("## ")[0]
    s = pd.read_csv(report / "summary.csv").set_index("arm")
    ad = s.loc["lora+adapter"]
    assert ad["delta_verdict"] == stats.BETTER
    assert (
        f"lora+adapter vs LoRA-only [primary]: BETTER: {100 * ad['delta_diff']:+.1f} EM "
        f"(95% CI {100 * ad['delta_lo']:+.1f}..{100 * ad['delta_hi']:+.1f}, Holm-adjusted p="
    ) in verdict
    assert "at 1.60x trainable params, 1.20x step time, 1.10x peak memory." in verdict
    assert "matched-lora (LoRA r=32, parameter-matched to lora+adapter, 1.01x the trainable params" in verdict
    assert "trainable params of lora+adapter) vs LoRA-only [secondary, unadjusted]" in verdict
    assert "lora+adapter vs matched-lora (same parameter budget) [secondary, unadjusted]" in verdict
    ko = 100 * (np.mean([0.20, 0.22, 0.21]) - np.mean(TEST_EM["lora+adapter"]))
    assert f"lora {ko:+.1f}" in verdict
    base = s.loc["lora"]
    assert (
        f"test EM {100 * base['em_mean']:.1f} (95% CI {100 * base['em_lo']:.1f}..{100 * base['em_hi']:.1f}) "
        f"over 3 seed(s) x {N_ITEMS} test items"
    ) in verdict
    family = [line for line in verdict.splitlines() if "Primary family" in line][0]
    assert "2 comparison(s)" in family and "better: lora+adapter" in family
    for arm in ARMS:  # exactly one verdict per comparison
        line = next(line for line in verdict.splitlines() if line.startswith(f"- {arm}"))
        assert sum(w in line for w in ("BETTER", "WORSE", "EQUIVALENT", "INCONCLUSIVE")) == 1
    assert "nan" not in md.lower()


def test_table_has_one_row_per_arm_with_recorded_values(report):
    table = (report / "report.md").read_text().split("## Arms")[1].split("## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| lora") or line.startswith("| matched")]
    assert [r.split("|")[1].strip() for r in rows] == ["lora", *ARMS]
    adapter = rows[1]
    s = pd.read_csv(report / "summary.csv").set_index("arm").loc["lora+adapter"]
    assert f"{100 * s['em_mean']:.1f} [{100 * s['em_lo']:.1f}..{100 * s['em_hi']:.1f}]" in adapter
    assert "160,000" in adapter and "1.600" in adapter and "5/1/1" in adapter and "| better " in adapter
    assert "lora: r=8, lr=0.0003; adapter: width=16" in adapter
    assert "| baseline " in rows[0]


def test_paper_tables_are_the_summary_numbers(report):
    """table.tex (booktabs) and table.md: one row per arm, the numbers of summary.csv as printed."""
    s = pd.read_csv(report / "summary.csv").set_index("arm")
    tex, md = (report / "table.tex").read_text(), (report / "table.md").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    for arm in s.index:
        r = s.loc[arm]
        em = f"{100 * r['em_mean']:.1f} [{100 * r['em_lo']:.1f}, {100 * r['em_hi']:.1f}]"
        row = next(line for line in tex.splitlines() if line.startswith(arm.replace("_", "\\_") + " & "))
        assert (
            f"{int(r['trainable_params']):,}" in row and em in row and row.endswith(f"{int(r['seeds'])} \\\\")
        )
        md_row = next(line for line in md.splitlines() if line.startswith(f"| {arm} |"))
        assert em in md_row
        if arm != "lora":
            diff = f"{100 * r['delta_diff']:+.1f} [{100 * r['delta_lo']:+.1f}, {100 * r['delta_hi']:+.1f}]"
            decided = r["delta_status"] in ("ok", "constant")
            word = r["delta_verdict"] if decided else f"no verdict ({r['delta_status'].replace('_', ' ')})"
            assert diff in row and diff in md_row and f"| {word} |" in md_row


def test_interference_table_reads_what_the_study_recorded(report):
    md = (report / "report.md").read_text()
    section = md.split("## Do the methods interfere?")[1].split("## ")[0]
    cos = INTERFERENCE["lora+adapter"]
    row = next(line for line in section.splitlines() if line.startswith("| lora+adapter"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:3] == ["lora+adapter", "3", "0.910, 0.880, 0.930"]
    assert cells[3] == f"{np.mean(list(cos.values())) - 0.2:.2f}"
    r = similarity.interference(cos, {tuple(k.split(",")): v for k, v in RESEED["lora+adapter"].items()})
    assert cells[4:7] == [f"{r.cos_reseed:.3f}", f"{r.diff:+.2f} [{r.lo:+.2f}..{r.hi:+.2f}]", r.reading]
    assert r.reading == similarity.LESS  # same-seed cosines ~0.9 against reseed cosines ~0.5
    assert "tuned alone" not in section  # recorded with LoRA held fixed: no legacy caveat
    verdict = md.split("## Verdict")[1].split("## ")[0]
    assert "Interference in lora+adapter (LoRA held fixed)" in verdict and "less than a reseed" in verdict
    assert "lora+adapter vs its own LoRA settings trained alone" in verdict


def test_interference_recorded_before_lora_was_held_fixed_reads_with_its_caveat():
    from types import SimpleNamespace

    from ablate.report import render
    from ablate.report.collect import interference_frame

    legacy = {"0": {"cos": 0.9, "cos_mean": 0.9, "norm_ratio": 0.8, "n_matrices": 4.0}, "1": None}
    frame = interference_frame({"lora+adapter": SimpleNamespace(user_attrs={"interference": legacy})})
    assert frame[["arm", "kind", "seed", "cos"]].values.tolist() == [["lora+adapter", "tuned alone", 0, 0.9]]
    assert render._interference_notes(frame)[-1] == render.INTERFERENCE_LEGACY


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
    # forest, params, 3 histories, best-so-far, expected best, importance, curves, grad norms,
    # overhead, knockout
    assert len(srcs) == len(pngs) == 1 + 1 + 3 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    # the forest plot opens the report, above the verdict's words
    assert html.index("forest plot") < html.index("<h2>Verdict</h2>")
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


def test_one_seed_gives_an_item_interval_and_says_so(recorded, tmp_path):
    _, mo = recorded
    out = build_report(mo.name, mo.storage, None, tmp_path / "mo")
    md = (out / "report.md").read_text()
    verdict = md.split("## Verdict")[1].split("## ")[0]
    c = stats.compare(
        np.array([item_outcomes("lora+adapter", 0)["correct"]], dtype=float),
        np.array([item_outcomes("lora", 0)["correct"]], dtype=float),
        metric="em",
        sesoi=0.02,
    )
    assert c.status == stats.TOO_FEW_SEEDS and c.lo < c.diff < c.hi and c.verdict == stats.INCONCLUSIVE
    assert f"{100 * c.diff:+.1f} EM (95% CI {100 * c.lo:+.1f}..{100 * c.hi:+.1f}" in verdict
    assert "NO VERDICT — 1 seed(s): too few to separate a better method from a lucky run" in verdict
    assert "No tracking URI given, so no learning curves" in md
    assert "nan" not in md.lower()
    trials = pd.read_csv(out / "trials.csv")  # the multi-objective arms: both objective values per trial
    assert {"value.val_em", "value.trainable_params"} <= set(trials.columns)


def _synthetic(tmp_path, name: str, arm: np.ndarray, base: np.ndarray):
    rec = write_study(
        tmp_path / name,
        name,
        arms=("lora", "lora+adapter"),
        seeds=tuple(range(len(arm))),
        mlflow=False,
        items={"lora": base, "lora+adapter": arm},
    )
    out = build_report(rec.name, rec.storage, None, tmp_path / name / "report")
    s = pd.read_csv(out / "summary.csv").set_index("arm").loc["lora+adapter"]
    return s, (out / "report.md").read_text()


def _bernoulli(p_item: np.ndarray, n_seeds: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.random((n_seeds, len(p_item))) < p_item).astype(int)


def test_synthetic_studies_get_the_verdict_their_truth_implies(tmp_path):
    rng = np.random.default_rng(0)
    p_item = rng.uniform(0.3, 0.6, 200)
    # a true effect of +10 points with small noise: better
    base = _bernoulli(p_item, 3, rng)
    s, md = _synthetic(tmp_path, "plus10", _bernoulli(p_item + 0.10, 3, rng) | base, base)
    assert s["delta_verdict"] == stats.BETTER and s["delta_lo"] > 0 and "BETTER" in md
    # the same model twice, each seed flipping a few items both ways: equivalent within ±2 EM
    base = _bernoulli(p_item, 5, np.random.default_rng(1))
    arm = base.copy()
    for seed in range(5):
        arm[seed, [seed, 50 + seed]] = 1 - arm[seed, [seed, 50 + seed]]
    s, md = _synthetic(tmp_path, "same", arm, base)
    assert s["delta_verdict"] == stats.EQUIVALENT and "EQUIVALENT within ±2.0 EM" in md
    # a noisy pair with 2 seeds and 40 items: inconclusive, with the seeds that would settle it
    base, arm = _bernoulli(p_item[:40], 2, rng), _bernoulli(p_item[:40] + 0.05, 2, rng)
    s, md = _synthetic(tmp_path, "noisy", arm, base)
    assert s["delta_verdict"] == stats.INCONCLUSIVE and s["delta_status"] == stats.TOO_FEW_SEEDS
    assert np.isnan(s["delta_seeds_needed"])  # 2 seeds' variance is no basis for a number
    assert "NO VERDICT — 2 seed(s): too few to separate a better method from a lucky run" in md
    # zero spread across seeds (every seed identical) still gets a non-zero interval from the items
    base = np.tile(_bernoulli(p_item, 1, rng), (3, 1))
    arm = np.tile(_bernoulli(p_item + 0.02, 1, rng), (3, 1))
    s, _ = _synthetic(tmp_path, "flat", arm, base)
    assert s["delta_hi"] - s["delta_lo"] > 0.01


def test_identical_arms_say_so_in_words():
    arms = pd.DataFrame(
        [
            {"arm": a, "matched_to": None, "best_config": {}, "objective": ["val_loss"], "components": c}
            for a, c in (("lora", ["lora"]), ("lora+adapter", ["lora", "adapter"]))
        ]
    ).set_index("arm", drop=False)
    reps = pd.DataFrame(
        [{"arm": a, "seed": s, "test_em": 1.0} for a in ("lora", "lora+adapter") for s in range(3)]
    )
    data = StudyData("same", arms, pd.DataFrame(columns=["arm", "number", "state"]), reps)
    s = summarise(data)
    c = s.comparisons["lora+adapter"]
    assert c.status == stats.CEILING and (c.lo, c.hi) == (0.0, 0.0) and c.verdict == stats.INCONCLUSIVE
    line = next(v for v in s.verdict if v.startswith("lora+adapter"))
    assert "NO VERDICT — both arms score 1 on every item: the task cannot tell them apart" in line
    assert "nan" not in " ".join(s.verdict).lower()


def test_interaction_is_the_item_level_contrast(tmp_path):
    from ablate.report.numbers import interaction

    rng = np.random.default_rng(3)
    mats = {a: rng.integers(0, 2, (3, 50)) for a in ("lora", "adapter", "lora+adapter")}
    arms = pd.DataFrame(
        [{"arm": a, "components": a.split("+"), "best_config": {}, "matched_to": None} for a in mats]
    ).set_index("arm", drop=False)
    zero = rng.integers(0, 2, 50)
    rows = [
        {"arm": a, "seed": s, "item": i, "correct": m[s, i], "loss": 1.0, "zero_shot_correct": zero[i]}
        for a, m in mats.items()
        for s in range(3)
        for i in range(50)
    ]
    data = StudyData("x", arms, pd.DataFrame(columns=["arm", "number", "state"]), pd.DataFrame())
    data.items = pd.DataFrame(rows)
    it = interaction(data, "lora+adapter", "lora")
    d = mats["lora+adapter"] - mats["lora"] - mats["adapter"] + zero[None, :]
    assert it.single == "adapter" and it.zero_shot == "per item"
    assert it.diff == pytest.approx(d.mean())
    assert (it.diff, it.lo, it.hi, it.p) == pytest.approx(stats.contrast(d))
    vs = stats.compare(mats["lora+adapter"], mats["adapter"], metric="em", sesoi=0.02)
    assert (it.vs_single.diff, it.vs_single.lo, it.vs_single.hi) == pytest.approx((vs.diff, vs.lo, vs.hi))


def test_building_a_report_never_imports_torch(recorded, tmp_path):
    rec, _ = recorded
    code = (
        "import sys; from pathlib import Path; from ablate.report import build_report; "
        f"build_report({rec.name!r}, {rec.storage!r}, {rec.tracking_uri!r}, Path({str(tmp_path / 'r')!r})); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "r" / "report.md").exists()


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
    assert "lora+adapter vs LoRA-only [primary]: INCONCLUSIVE (no replicate seeds in both arms yet)" in md
    assert len(pd.read_csv(out / "trials.csv")) == 14 and "nan" not in md.lower()


def test_capacity_levels_are_read_and_plotted(tmp_path):
    rec = write_study(tmp_path / "cap", "cap", arms=("lora", "lora+adapter"), mlflow=False)
    recorded = {}
    for arm in ("lora", "lora+adapter"):
        st = optuna.load_study(study_name=f"cap/{arm}", storage=rec.storage)
        levels = {
            str(k): {
                str(s): {"test_em": 0.5 + 0.01 * k + 0.001 * s, "trainable_params": 1000 * k} for s in (0, 1)
            }
            for k in (1, 4, 16)
        }
        st.set_user_attr("capacity", levels)
        recorded[arm] = levels
    data = collect("cap", rec.storage, None)
    assert len(data.capacity) == 2 * 3 * 2
    row = data.capacity[(data.capacity["arm"] == "lora+adapter") & (data.capacity["level"] == 4)]
    assert row["test_em"].tolist() == pytest.approx([0.54, 0.541])
    out = build_report("cap", rec.storage, None, tmp_path / "out")
    assert (out / "figures" / "capacity.png").exists()
    assert "### Capacity: test EM against trainable parameters" in (out / "report.md").read_text()


def test_ablate_report_command_never_imports_torch(tmp_path):
    """The whole ``ablate report`` command, config validation included, runs without torch."""
    rec = write_study(tmp_path, "lora_vs_adapter", arms=("lora", "lora+adapter"), mlflow=False)
    code = (
        "import sys; from ablate.cli import main\n"
        "try:\n"
        f"    main(['report', 'study=lora_vs_adapter', 'study.storage={rec.storage}', 'tracking=none'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "reports" / "lora_vs_adapter" / "report.md").exists()


def test_a_failed_seed_counts_against_its_arm():
    """Seed 3 of the combination diverged: its items are scored wrong (and the worst recorded loss),
    not dropped from both arms, and the verdict says so."""
    from ablate.report.numbers import matrix

    rng = np.random.default_rng(4)
    arms = pd.DataFrame(
        [
            {"arm": a, "matched_to": None, "best_config": {}, "objective": ["val_loss"], "components": c}
            for a, c in (("lora", ["lora"]), ("lora+adapter", ["lora", "adapter"]))
        ]
    ).set_index("arm", drop=False)
    rows = [
        {"arm": a, "seed": s, "item": i, "correct": int(rng.random() < 0.6), "loss": float(rng.random())}
        for a in ("lora", "lora+adapter")
        for s in (1, 2, 3, 4)
        for i in range(30)
        if not (a == "lora+adapter" and s == 3)
    ]
    reps = pd.DataFrame(
        [{"arm": a, "seed": s, "test_em": 0.6} for a in ("lora", "lora+adapter") for s in (1, 2, 4)]
    )
    data = StudyData("failed", arms, pd.DataFrame(columns=["arm", "number", "state"]), reps)
    data.items = pd.DataFrame(rows)
    data.failures = pd.DataFrame(
        [{"arm": "lora+adapter", "seed": 3, "state": "pruned", "reason": "nonfinite_loss"}]
    )
    em, loss = matrix(data, "lora+adapter"), matrix(data, "lora+adapter", "loss")
    assert list(em.index) == [1, 2, 3, 4] and em.loc[3].sum() == 0
    worst = data.items.groupby("item")["loss"].max()
    assert loss.loc[3].to_numpy() == pytest.approx(worst.reindex(loss.columns).to_numpy())
    s = summarise(data)
    assert s.comparisons["lora+adapter"].n_seeds == 4  # paired over all four seeds, not three
    assert s.numbers.loc["lora+adapter", "seeds_failed"] == 1
    line = next(v for v in s.verdict if v.startswith("lora+adapter"))
    assert "1 replicate seed(s) failed: seed 3 (nonfinite_loss); each is scored as wrong" in line


def test_failures_are_read_from_the_replicate_studies():
    """Failed or pruned replicate seeds that never completed; a seed retried to completion and an
    interrupted run (a signal, not the arm's fault) are not failures."""
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    from ablate.report.collect import failures_frame
    from ablate.storage import INTERRUPTED

    storage = optuna.storages.InMemoryStorage()
    reps = optuna.create_study(study_name="x/lora/replicate", storage=storage)
    dist = {"seed": IntDistribution(1, 9)}
    for seed, state, reason in (
        (1, TrialState.COMPLETE, None),
        (2, TrialState.PRUNED, "nonfinite_loss"),
        (3, TrialState.FAIL, "oom"),
        (3, TrialState.COMPLETE, None),
        (4, TrialState.FAIL, INTERRUPTED),
    ):
        attrs = {"reason": reason} if reason else {}
        value = 0.5 if state == TrialState.COMPLETE else None
        reps.add_trial(
            create_trial(
                params={"seed": seed}, distributions=dist, value=value, state=state, user_attrs=attrs
            )
        )
    f = failures_frame("x", storage, ["lora", "adapter"])
    assert f.to_dict("records") == [{"arm": "lora", "seed": 2, "state": "pruned", "reason": "nonfinite_loss"}]


def test_expected_best_of_n_trials_matches_a_hand_calculation():
    """Dodge et al. (2019) on three trials 1, 2, 3: the best of two draws (with replacement) is 1
    with probability 1/9, 2 with 3/9 and 3 with 5/9."""
    from ablate.report.numbers import expected_best

    assert expected_best(np.array([2.0, 3.0, 1.0]), minimize=False) == pytest.approx([2, 22 / 9, 72 / 27])
    assert expected_best(np.array([2.0, 3.0, 1.0]), minimize=True) == pytest.approx([2, 14 / 9, 36 / 27])
