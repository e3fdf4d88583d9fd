"""study.seeds=auto: the group-sequential design's boundaries against published values and a Monte
Carlo of the same Brownian motion, its vectorised harness against its own rules draw by draw, its
false-verdict rate under identical arms on the fast slice, and a tiny study that takes its looks."""

from __future__ import annotations

import numpy as np
import pytest

from ablate.stats import sequential as Q
from ablate.stats import simulate as S
from ablate.stats import verdict as V
from tests.test_cli import run_cli
from tests.test_study import storage_studies

# gsDesign (Anderson), one-sided alpha = 0.025, five equally spaced looks: sfLDOF's upper bounds
GSDESIGN_OBF = (4.877, 3.357, 2.680, 2.290, 2.031)
EQUAL = (0.2, 0.4, 0.6, 0.8, 1.0)


def test_obrien_fleming_boundaries_match_gsdesign():
    got = Q.boundaries(EQUAL, 0.025, "obf", sides=1)
    assert got == pytest.approx(GSDESIGN_OBF, abs=1e-3)


@pytest.mark.parametrize("shape", Q.SPENDING)
@pytest.mark.parametrize("sides", [1, 2])
def test_boundaries_spend_alpha_as_promised_by_monte_carlo(shape, sides):
    """Brownian motion at the default looks' information fractions: the chance of first crossing
    at each look equals the spending function's increment (200,000 paths: +-0.001)."""
    t = np.array(Q.LOOKS, dtype=float) / Q.LOOKS[-1]
    c = np.array(Q.boundaries(tuple(t), 0.05, shape, sides=sides))
    rng = np.random.default_rng(0)
    z = np.cumsum(
        rng.standard_normal((200_000, len(t))) * np.sqrt(np.diff(t, prepend=0.0)), axis=1
    ) / np.sqrt(t)
    cross = (np.abs(z) if sides == 2 else z) >= c
    first = np.where(cross.any(axis=1), cross.argmax(axis=1), -1)
    per_look = [(first == k).mean() for k in range(len(t))]
    assert per_look == pytest.approx(np.diff(Q.spent(t, 0.05, shape), prepend=0.0), abs=1e-3)


def test_the_design_caps_its_looks_and_refuses_bad_ones():
    assert Q.make_design(Q.LOOKS, 10).looks == (3, 5, 8, 10)
    assert Q.make_design(Q.LOOKS, 20).looks == Q.LOOKS
    d = Q.Design(looks=Q.LOOKS)
    assert d.nominal[-1] < 0.05 and d.spent_at(len(d.looks) - 1) == pytest.approx(0.05)
    assert list(d.nominal) == sorted(d.nominal)  # O'Brien-Fleming: strict early, near alpha late
    with pytest.raises(ValueError, match="at least 3"):
        Q.Design(looks=(2, 5))
    with pytest.raises(ValueError, match="increase"):
        Q.Design(looks=(5, 3))


def _draws(regime: str, effect: float, n_reps: int, n_items: int, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    reg = S.REGIMES[regime]
    items = S.draw_items(reg, n_reps, 2, n_items, rng)
    y = S.draw_seeds(reg, items, np.array([0.0, S.delta_for(reg, effect)]), cap, rng)
    return y


@pytest.mark.parametrize("effect", [0.0, 0.04])
def test_the_vectorised_harness_follows_the_design_draw_by_draw(effect):
    """``run_batch`` (the benchmark's) and ``Design.step`` on ``compare`` (the study's) agree."""
    design = Q.Design(looks=(3, 5, 8), sesoi=S.SESOI, futility=0.2)
    y = _draws("moderate", effect, 40, 64, design.cap, seed=3)
    run = Q.run_batch(design, y[:, 1:] - y[:, :1])
    for r in range(len(y)):
        for k, n in enumerate(design.looks):
            c = V.compare(y[r, 1, :n], y[r, 0, :n], metric="em", sesoi=S.SESOI, alpha=design.alpha)
            step = design.step(k, c)
            if step.stopped:
                break
        assert (step.reason, step.n_seeds) == (run.reasons[r, 0], run.seeds[r, 0]), r
        assert (step.verdict in (V.BETTER, V.BETTER_SMALL)) == run.better[r, 0], r
        assert (step.verdict in (V.WORSE, V.WORSE_SMALL)) == run.worse[r, 0], r


def test_false_verdicts_under_identical_arms_stay_at_alpha_on_the_fast_slice():
    """Seed-dominated runs, 64 items, 2,000 simulated studies: the rate at which the design calls
    identical arms better or worse is at most alpha within Monte Carlo error (a one-sided binomial
    test of "rate > alpha" does not reject at 1%); testing at 0.05 at every look, with no spending,
    is caught by the same test."""
    from scipy.stats import binomtest

    y = _draws("seed-dominated", 0.0, 2000, 64, 20, seed=11)
    d = y[:, 1:] - y[:, :1]
    design = Q.Design(looks=Q.LOOKS, sesoi=S.SESOI)

    def above_alpha(run: Q.Run) -> float:
        false = int((run.better | run.worse).sum())
        return binomtest(false, run.better.size, design.alpha, alternative="greater").pvalue

    assert above_alpha(Q.run_batch(design, d)) > 0.01
    naive = Q.Design(looks=Q.LOOKS, sesoi=S.SESOI)
    object.__setattr__(naive, "efficacy", (1.959964,) * len(Q.LOOKS))  # 0.05 at every look
    assert above_alpha(Q.run_batch(naive, d)) < 0.01


def test_the_harness_reports_power_and_seeds_against_a_fixed_design():
    m = Q.measure(S.REGIMES["moderate"], Q.Design(looks=(3, 5, 8), sesoi=S.SESOI), 0.06, 200, n_reps=60)
    assert m["power"] > 0.5 and m["false"] == 0.0
    assert 3 <= m["seeds_per_arm"] < 8 and m["fixed_n"] >= 3 and m["fixed_spent"] == 2 * m["fixed_n"]


def _forced_open(monkeypatch):
    """Every comparison stays open until the cap (the tiny model scores 0 everywhere, which would
    otherwise stop it at the first look as 'no verdict')."""

    def step(self, k, c):
        return Q.Step(k, c.n_seeds, Q.CAP if k == len(self.looks) - 1 else Q.OPEN)

    monkeypatch.setattr(Q.Design, "step", step)


def test_a_study_takes_its_looks_once_and_only_open_arms_get_more_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _forced_open(monkeypatch)
    args = ["study=lora_vs_adapter", "model=tiny", "budget=smoke", "tracking=none", "study.n_trials=2"]
    args += ["study.interference=false", "study.seeds=auto", "study.looks=[3,4]", "study.max_seeds=5"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert [ln.split("]")[0] for ln in out.splitlines() if ln.startswith("[look")] == [
        "[look 1/3: 3 seeds",
        "[look 2/3: 4 seeds",
        "[look 3/3: 5 seeds",
    ]
    studies = storage_studies("sqlite:///studies/lora_vs_adapter.db")
    seeds = {
        n.split("/")[1]: len(s.user_attrs.get("replicates") or {})
        for n, s in studies.items()
        if n.count("/") == 1
    }
    assert seeds == {"lora": 5, "adapter": 3, "lora+adapter": 5, "matched-lora": 3}
    looks = studies["lora_vs_adapter/lora"].user_attrs["sequential"]["looks"]
    assert [(lk["seeds"], lk["steps"]["lora+adapter"]["reason"]) for lk in looks] == [
        (3, Q.OPEN), (4, Q.OPEN), (5, Q.CAP),
    ]  # fmt: skip
    report = (tmp_path / "reports" / "lora_vs_adapter" / "report.md").read_text()
    assert "## Seeds: the group-sequential design" in report
    assert "inconclusive at the cap of 5 seeds" in report and "seeds per arm: lora 5, adapter 3" in report
    trials = sum(len(s.trials) for s in studies.values())

    code, out, _ = run_cli(args, capsys)  # resumed: nothing re-run, no look taken again
    assert code == 0 and "[look" not in out
    again = storage_studies("sqlite:///studies/lora_vs_adapter.db")
    assert sum(len(s.trials) for s in again.values()) == trials
    assert len(again["lora_vs_adapter/lora"].user_attrs["sequential"]["looks"]) == 3


def test_two_workers_take_each_look_once(tmp_path):
    """``workers=2`` with ``seeds=auto`` on the default SQLite storage: both processes run the
    study to its end, every seed of the first look is replicated once, and the look is decided and
    recorded once, the later process finding it recorded (the tiny model scores 0 everywhere: the
    comparison stops there, "no verdict"). Which process takes which trial is up to timing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from optuna.trial import TrialState

    root = Path(__file__).resolve().parents[1]
    args = ["study=lora_vs_adapter", "model=tiny", "budget=smoke", "study.factorial=false"]
    args += ["study.matched=false", "study.n_trials=2", "study.interference=false", "study.seeds=auto"]
    args += ["study.looks=[3,4]", "study.max_seeds=5", "study.name=two", "workers=2"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert proc.stdout.count("worker w") == 2 and "2 workers done" in proc.stdout
    assert proc.stdout.count("[look 1/3: 3 seeds] lora+adapter vs lora: no verdict") == 1, proc.stdout[-3000:]
    assert "[look 2/3" not in proc.stdout
    studies = storage_studies(f"sqlite:///{tmp_path}/studies/two.db")
    looks = studies["two/lora"].user_attrs["sequential"]["looks"]
    assert [(lk["seeds"], lk["steps"]["lora+adapter"]["reason"]) for lk in looks] == [(3, Q.NO_VERDICT)]
    for arm in ("lora", "lora+adapter"):
        reps = [t for t in studies[f"two/{arm}/replicate"].trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["seed"] for t in reps) == [1, 2, 3]
