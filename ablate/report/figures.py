"""The report's figures, one function each, saved as PNG; each says why when it is skipped.

Headless by construction (Agg): reports are built on servers and in CI.
Optuna's own matplotlib plots are used where they fit (optimisation history);
the cross-arm figures are drawn here because Optuna plots one study at a time.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from ablate import stats  # noqa: E402
from ablate.report.collect import StudyData  # noqa: E402
from ablate.report.numbers import LATE_BEST, METRIC, Summary, knockout_reference, search_curve  # noqa: E402

MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA's forest on 2-3 points says nothing; below this we skip


@dataclass
class Fig:
    """A figure for the report: ``path`` is None when skipped, and ``note`` says why."""

    title: str
    path: Path | None
    note: str = ""
    top: bool = False  # shown first, above the verdict's words (the forest plot)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _colors(arms: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {a: matplotlib.colors.to_hex(cmap(i % 10)) for i, a in enumerate(arms)}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of points not dominated when ``x`` (cost) is minimised and ``y`` (metric) maximised.

    Sorted by increasing cost, a point is on the front when it beats every cheaper point.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.lexsort((-ys, xs))
    front, best = [], -math.inf
    for i in order:
        if ys[i] > best:
            front.append(int(i))
            best = ys[i]
    return front


def forest(s: Summary, out: Path) -> Fig:
    """Every comparison's difference with its interval, the ±sesoi band shaded, the primary family
    marked and the verdict beside each row: the picture to read first."""
    title = "Every comparison at a glance (forest plot)"
    rows = [(f"{a} vs {s.baseline}", c) for a, c in s.comparisons.items()]
    rows += [(k, c) for k, c in s.secondary.items()]
    rows += [(f"{a} vs its LoRA alone (same settings)", c) for a, c in s.fixed_lora.items()]
    rows += [(f"{a} vs {it.single} alone", it.vs_single) for a, it in s.interactions.items()]
    rows = [(name, c) for name, c in rows if c.status != stats.NO_DATA and not math.isnan(c.diff)]
    if not rows:
        return Fig(title, None, "No comparison has replicate seeds in both arms yet.", top=True)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    ax.axvspan(
        -100 * s.sesoi,
        100 * s.sesoi,
        color="#cfe8cf",
        alpha=0.7,
        lw=0,
    )
    ax.axvline(0, color="grey", lw=1)
    colour = {stats.BETTER: "#1a7f37", stats.WORSE: "#b42318", stats.EQUIVALENT: "#1f4e99"}
    colour |= {stats.BETTER_SMALL: "#6aa87a", stats.WORSE_SMALL: "#c97a72"}
    for y, (_, c) in enumerate(reversed(rows)):
        lo, hi = 100 * c.lo, 100 * c.hi
        col = colour.get(c.verdict, "#555555")
        ax.plot([lo, hi], [y, y], color=col, lw=2.2 if c.primary else 1.4)
        ax.plot([100 * c.lo90, 100 * c.hi90], [y, y], color=col, lw=5 if c.primary else 3.5, alpha=0.45)
        ax.plot(100 * c.diff, y, "D" if c.primary else "o", color=col, mec="black", ms=7)
        word = c.verdict if c.status in stats.DECIDABLE else f"no verdict: {c.status.replace('_', ' ')}"
        if c.verdict == stats.INCONCLUSIVE and c.seeds_needed:
            word += f" (~{c.seeds_needed} seeds)"
        elif c.verdict == stats.INCONCLUSIVE and c.more_items_needed:
            word += " (more test items)"
        ax.annotate(word, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8, color=col)
    labels = [("★ " if c.primary else "") + name for name, c in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel(
        f"difference in test EM (points): thin line 95% CI (the test), thick 90% CI (equivalence); "
        f"shaded: ±sesoi ({100 * s.sesoi:.1f} EM)",
        fontsize=9,
    )
    ax.set_title("★ / diamond: primary family (Holm-adjusted); circles: secondary, unadjusted", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.subplots_adjust(right=0.75)
    return Fig(title, _save(fig, out / "forest.png"), top=True)


def metric_vs_params(data: StudyData, s: Summary, out: Path) -> Fig:
    """Search trials' val EM and replicate test EM against trainable params, Pareto front per arm."""
    title = "Task metric vs trainable parameters"
    t = data.trials
    have = {"metrics.val_em", "metrics.trainable_params"} <= set(t.columns)
    t = (
        t[(t["state"] == "complete")].dropna(subset=["metrics.val_em", "metrics.trainable_params"])
        if have
        else t
    )
    if (not have or t.empty) and s.numbers["seeds"].sum() == 0:
        return Fig(title, None, "No complete trials and no replicates recorded yet.")
    colors = _colors(list(s.numbers.index))
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in s.numbers.index:
        at = t[t["arm"] == arm] if have else t.iloc[0:0]
        if len(at):
            x, y = at["metrics.trainable_params"].to_numpy(), 100 * at["metrics.val_em"].to_numpy()
            ax.scatter(x, y, s=14, alpha=0.45, color=colors[arm])
            front = sorted(pareto_front(x, y), key=lambda i: x[i])
            ax.step(x[front], y[front], where="post", color=colors[arm], alpha=0.8, lw=1.2)
        r = s.numbers.loc[arm]
        if r["seeds"] > 0 and not math.isnan(r["trainable_params"]):
            # asymmetric where the interval is cut at 0 or 100
            err = (
                0
                if math.isnan(r["em_lo"])
                else [[100 * (r["em_mean"] - r["em_lo"])], [100 * (r["em_hi"] - r["em_mean"])]]
            )
            marker = "*" if arm == s.baseline else "D"
            ax.errorbar(
                r["trainable_params"],
                100 * r["em_mean"],
                yerr=err,
                fmt=marker,
                ms=13 if marker == "*" else 8,
                color=colors[arm],
                mec="black",
                capsize=3,
                label=f"{arm}" + (" (baseline)" if arm == s.baseline else ""),
            )
        elif len(at):
            ax.scatter([], [], color=colors[arm], label=arm)
    base = s.numbers.loc[s.baseline]
    if base["seeds"] > 0:
        ax.axhline(100 * base["em_mean"], color="grey", ls="--", lw=1, label="baseline test EM")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("EM (points)")
    ax.set_title(
        "dots: search trials (val EM), line: Pareto front; markers: replicate test EM ± 95% CI", fontsize=9
    )
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return Fig(title, _save(fig, out / "metric_vs_params.png"))


def _target(st: optuna.Study, objective: list[str]) -> tuple[object, str]:
    if len(st.directions) == 1:
        return None, objective[0]
    return (lambda tr: tr.values[0]), objective[0]


def optimisation_history(data: StudyData, out: Path) -> list[Fig]:
    figs = []
    for arm, st in data.studies.items():
        title = f"Optimisation history: {arm}"
        done = [t for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        if not done:
            figs.append(
                Fig(title, None, f"{arm} has no complete search trials (replicated only, or still running).")
            )
            continue
        target, name = _target(st, data.arms.loc[arm, "objective"])
        # Optuna's plots switch the global style to ggplot; rc_context keeps that to this figure.
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = optuna.visualization.matplotlib.plot_optimization_history(
                st, target=target, target_name=name
            )
            ax.set_title(title)
            ax.figure.set_size_inches(6, 3.6)
            figs.append(Fig(title, _save(ax.figure, out / f"history_{slug(arm)}.png")))
    return figs


def importances(data: StudyData) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per-arm fANOVA importances (seeded, so reports are reproducible) and per-arm skip reasons."""
    result, skipped = {}, {}
    for arm, st in data.studies.items():
        done = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        params = {p for t in done for p in t.params}
        if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
            skipped[arm] = f"{len(done)} complete trial(s), fewer than {MIN_TRIALS_FOR_IMPORTANCE}"
        elif len(params) < 2:
            skipped[arm] = f"only {len(params)} searched parameter, nothing to rank"
        else:
            target, _ = _target(st, data.arms.loc[arm, "objective"])
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result[arm] = optuna.importance.get_param_importances(st, evaluator=evaluator, target=target)
    return result, skipped


def importance_figure(imp: dict[str, dict[str, float]], skipped: dict[str, str], out: Path) -> Fig:
    title = "Hyperparameter importance (fANOVA)"
    notes = "; ".join(f"{a}: skipped ({why})" for a, why in skipped.items())
    if not imp:
        return Fig(title, None, notes or "No arm with search trials.")
    fig, axes = plt.subplots(1, len(imp), figsize=(4 * len(imp), 2.8), squeeze=False)
    for ax, (arm, values) in zip(axes[0], imp.items(), strict=True):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set_title(arm, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance")
    return Fig(title, _save(fig, out / "importance.png"), notes)


def learning_curves(data: StudyData, s: Summary, out: Path) -> Fig:
    title = "Eval-loss learning curves of the replicated best configurations"
    if data.curves is None or data.curves.empty:
        return Fig(title, None, data.curves_note or "No val_loss history recorded for the replicate runs.")
    colors = _colors(list(s.numbers.index))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, g in data.curves.groupby("arm", sort=False):
        for _, run in g.groupby("seed"):
            ax.plot(run["step"], run["val_loss"], color=colors.get(arm, "black"), alpha=0.3, lw=1)
        mean = g.groupby("step")["val_loss"].mean()
        ax.plot(
            mean.index,
            mean.to_numpy(),
            color=colors.get(arm, "black"),
            lw=2.2,
            label=f"{arm} (mean of seeds)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Fig(title, _save(fig, out / "learning_curves.png"), data.curves_note)


def overhead(s: Summary, out: Path) -> Fig:
    title = "Overhead relative to the baseline (replicate means)"
    cols = {"params_ratio": "trainable params", "step_time_ratio": "step time", "mem_ratio": "peak memory"}
    df = s.numbers[list(cols)].rename(columns=cols).astype(float)
    df = df.drop(index=s.baseline).dropna(how="all")
    if df.empty:
        return Fig(title, None, "No replicate costs recorded for both the baseline and another arm.")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    df.plot.bar(ax=ax, rot=0, color=["tab:purple", "tab:orange", "tab:green"])
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_ylabel(f"ratio to {s.baseline}")
    ax.grid(alpha=0.3, axis="y")
    return Fig(title, _save(fig, out / "overhead.png"))


def knockout(data: StudyData, s: Summary, out: Path) -> Fig:
    """Each combination arm's test EM with all components, then with each one switched off."""
    title = (
        "Component knockout (test EM with one component switched off at evaluation; bars: range over seeds)"
    )
    reps = data.replicates
    ko_cols = [c for c in reps.columns if c.startswith("knockout/") and c.endswith(f"/{METRIC}")]
    arms = [a for a in s.numbers.index if ko_cols and reps.loc[reps["arm"] == a, ko_cols].notna().any().any()]
    if not arms:
        return Fig(title, None, "No arm with more than one component recorded knockout metrics.")
    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.4), squeeze=False)
    subset = None
    for ax, arm in zip(axes[0], arms, strict=True):
        rep = reps[reps["arm"] == arm]
        _, subset = knockout_reference(rep)
        full = f"knockout_base/{METRIC}" if subset else METRIC  # the full model on the knockouts' own items
        cols = [full] + [c for c in ko_cols if rep[c].notna().any()]
        means = [100 * rep[c].mean() for c in cols]
        # error bars: the range over seeds (knockout is recorded per seed, not per item)
        err = [
            [m - 100 * rep[c].min() for m, c in zip(means, cols, strict=True)],
            [100 * rep[c].max() - m for m, c in zip(means, cols, strict=True)],
        ]
        labels = ["all on"] + [f"no {c.split('/')[1]}" for c in cols[1:]]
        ax.bar(labels, means, yerr=err, capsize=3, color=["tab:blue"] + ["tab:gray"] * (len(cols) - 1))
        ax.set_title(arm, fontsize=10)
        ax.set_ylabel("test EM (points)")
        ax.grid(alpha=0.3, axis="y")
    if subset:
        title += f"; on {subset} of the test items, the same for every arm and seed"
    return Fig(title, _save(fig, out / "knockout.png"))


def best_so_far(data: StudyData, s: Summary, out: Path) -> Fig:
    """Best search objective so far against trial number, one line per searched arm."""
    title = "Search convergence: best objective so far per arm"
    curves = {a: c for a in s.numbers.index if (c := search_curve(data, a)) is not None}
    if not curves:
        return Fig(title, None, "No single-objective search trials recorded.")
    colors = _colors(list(s.numbers.index))
    fig, ax = plt.subplots(figsize=(8, 4))
    for arm, c in curves.items():
        x = c.trials["number"] + 1
        ax.step(x, c.trials["best"], where="post", color=colors[arm], label=arm, lw=1.8)
        ax.scatter(x, c.trials["value"], s=10, color=colors[arm], alpha=0.4)
        if c.budget:
            ax.axvline(LATE_BEST * c.budget, color="grey", ls=":", lw=1)
    ax.set_xlabel("trial number")
    ax.set_ylabel(" / ".join(sorted({c.objective for c in curves.values()})))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    note = (
        " ".join(s.warnings)
        or "Every arm's best trial came before the last quarter of its budget (dotted line)."
    )
    return Fig(title, _save(fig, out / "best_so_far.png"), note)


def expected_best_figure(data: StudyData, s: Summary, out: Path) -> Fig:
    """Expected best validation objective against the number of trials (Dodge et al. 2019), per arm."""
    title = "Expected best validation score against trials (Dodge et al. 2019)"
    curves = {a: c for a in s.numbers.index if (c := search_curve(data, a)) is not None and len(c.expected)}
    if not curves:
        return Fig(title, None, "No single-objective search trials recorded.")
    colors = _colors(list(s.numbers.index))
    fig, ax = plt.subplots(figsize=(8, 4))
    for arm, c in curves.items():
        ax.plot(np.arange(1, len(c.expected) + 1), c.expected, marker="o", ms=3, color=colors[arm], label=arm)
    ax.set_xlabel("trials (n)")
    ax.set_ylabel("expected best of n: " + " / ".join(sorted({c.objective for c in curves.values()})))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    note = (
        "Each arm's completed search trials treated as draws from one distribution: the expected best "
        "of n of them. A curve still moving at its right end says the arm was still improving when its "
        "budget ran out; a flat one, that more trials would have found little. TPE's trials are not "
        "independent draws (later ones are guided), so read it as how quickly each arm found its good "
        "values, not as a random-search forecast."
    )
    return Fig(title, _save(fig, out / "expected_best.png"), note)


def grad_norms(data: StudyData, s: Summary, out: Path) -> Fig:
    """Per-component gradient norms of the replicate runs, mean over seeds, one panel per arm."""
    title = "Gradient norm per component during training (replicate runs, mean over seeds)"
    g = data.grad_norms
    if g is None or g.empty:
        return Fig(
            title, None, data.curves_note or "No gradient-norm history recorded for the replicate runs."
        )
    arms = [a for a in s.numbers.index if (g["arm"] == a).any()]
    comp_colors = _colors(list(dict.fromkeys(g["component"])))  # one colour per component on every panel
    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.2), squeeze=False, sharey=True)
    for ax, arm in zip(axes[0], arms, strict=True):
        for comp, cg in g[g["arm"] == arm].groupby("component", sort=False):
            mean = cg.groupby("step")["grad_norm"].mean()
            ax.plot(mean.index, mean.to_numpy(), label=comp, lw=1.4, color=comp_colors[comp])
        ax.set_yscale("log")
        ax.set_title(arm, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gradient norm (log)")
    return Fig(title, _save(fig, out / "grad_norms.png"))


def capacity(data: StudyData, s: Summary, out: Path) -> Fig | None:
    """Quality against trainable parameters as each arm's capacity is scaled (study.capacity_levels)."""
    c = data.capacity
    if c is None or c.empty:
        return None  # the study did not scale capacity: no figure, no placeholder
    title = "Capacity: test EM against trainable parameters (each arm's best configuration scaled)"
    colors = _colors(list(s.numbers.index))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, g in c.groupby("arm", sort=False):
        agg = g.groupby("level").agg(
            params=("trainable_params", "mean"),
            em=("test_em", "mean"),
            lo=("test_em", "min"),
            hi=("test_em", "max"),
        )
        agg = agg.sort_values("params")
        ax.errorbar(
            agg["params"],
            100 * agg["em"],
            yerr=[100 * (agg["em"] - agg["lo"]), 100 * (agg["hi"] - agg["em"])],
            marker="o",
            capsize=3,
            color=colors.get(arm, "black"),
            label=arm,
        )
        for level, r in agg.iterrows():
            ax.annotate(
                f"{level}x",
                (r["params"], 100 * r["em"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test EM (points; bars: range over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Fig(title, _save(fig, out / "capacity.png"))


def gate_table(data: StudyData, arm: str) -> pd.DataFrame:
    """Mean gate value per component (rows) and layer (columns) of one arm, averaged over its
    replicate seeds: the ``gate/<component>/<layer>`` metrics each run recorded on its final
    evaluation. Empty when the arm recorded none."""
    reps = data.replicates[data.replicates["arm"] == arm]
    cells = {}
    for col in [c for c in reps.columns if c.startswith("gate/")]:
        if reps[col].notna().any():
            _, comp, layer = col.split("/")
            cells[(comp, int(layer))] = float(reps[col].mean())
    if not cells:
        return pd.DataFrame()
    table = pd.Series(cells).unstack()
    return table.reindex([c for c in data.arms.loc[arm, "components"] if c in table.index])


def gates(data: StudyData, s: Summary, out: Path) -> Fig | None:
    """Heatmap of the learned gates (UniPELT): mean gate per layer and component, per gated arm.
    None for a study without gated arms."""
    tables = {a: gate_table(data, a) for a in s.numbers.index}
    tables = {a: t for a, t in tables.items() if not t.empty}
    if not tables:
        return None
    title = "Learned gates: mean g per layer and component (final test evaluation, mean over seeds)"
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(max(6.0, 0.35 * max(t.shape[1] for t in tables.values()) + 2), 1.2 + 1.1 * sum(len(t) for t in tables.values())), squeeze=False
    )  # fmt: skip
    for ax, (arm, t) in zip(axes[:, 0], tables.items(), strict=True):
        im = ax.imshow(t.to_numpy(dtype=float), cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_yticks(range(len(t)), list(t.index))
        ax.set_xticks(range(t.shape[1]), [str(c) for c in t.columns], fontsize=7)
        for (i, j), v in np.ndenumerate(t.to_numpy(dtype=float)):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(arm, fontsize=10)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.03, label="g (0.5 at start)")
    means = "; ".join(
        f"{arm}: " + ", ".join(f"{c} {row.mean():.2f} (layers {row.min():.2f}..{row.max():.2f})" for c, row in t.iterrows())
        for arm, t in tables.items()
    )  # fmt: skip
    note = f"Every gate starts at 0.5; above it the model leaned on that method. Mean over layers: {means}."
    return Fig(title, _save(fig, out / "gates.png"), note)


def all_figures(data: StudyData, s: Summary, out: Path) -> tuple[list[Fig], dict[str, dict[str, float]]]:
    imp, skipped = importances(data)
    figs = [forest(s, out), metric_vs_params(data, s, out), *optimisation_history(data, out)]
    figs += [best_so_far(data, s, out), expected_best_figure(data, s, out)]
    figs += [importance_figure(imp, skipped, out), learning_curves(data, s, out)]
    figs += [grad_norms(data, s, out), overhead(s, out), knockout(data, s, out)]
    figs += [f for f in (capacity(data, s, out), gates(data, s, out)) if f is not None]
    return figs, imp
