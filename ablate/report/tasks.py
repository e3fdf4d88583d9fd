"""The report of a study over several tasks (``study.tasks``): a verdict per task and arm, and each
arm's effect pooled over the tasks.

Every task is a study of its own (``NAME.<task>``) with its own full report in
``reports/NAME/<task>/``; this module reads those reports' ``summary.csv`` (the per-task paired
effect of each arm over the baseline, its standard error and verdict, Holm over that task's primary
family) and pools each arm by a random-effects meta-analysis (``ablate.stats.meta``): the pooled
effect with its HKSJ interval, tau^2 (how much the true effect moves from task to task), I^2 and
the prediction interval for a new task. The pooled primary family (the arms that are primary in
the tasks' design) is Holm-adjusted, and the verdict word follows the rules of one comparison.
A task where the two arms cannot be told apart (both at the floor or the ceiling) has no
standard error to weigh it by and is left out of that arm's pool, said per arm.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd
from statsmodels.stats.multitest import multipletests

from ablate.components import BASE
from ablate.report.summary import fmt_p, pts
from ablate.stats import meta
from ablate.stats.verdict import BETTER, BETTER_SMALL, DECIDABLE, EQUIVALENT, INCONCLUSIVE, WORSE, WORSE_SMALL
from ablate.storage import task_study

HARNESS = (
    "How often this is wrong is measured on the harness (benchmarks/results/calibration.md, 'Tasks': 3-8 "
    "tasks of 3 seeds x 200 items, true effects differing by tau): the pooled 95% interval covered the mean "
    "effect 92.9-100% of the time (below 95% only with 8 tasks in the seed-dominated regime, where each "
    "task's own error rests on 3 seeds), the plain normal interval 83.4-96.0%; the prediction interval "
    "covered a new task's effect 85.6-100%, short of 95% where tasks differ by about as much as one "
    "task's own error (tau^2 is then often estimated as 0): read it as the least spread to expect."
)


def per_task(study: str, tasks: list[str], out_dir: Path) -> pd.DataFrame:
    """One row per (task, arm) from each task's ``summary.csv`` (the baseline's row left out)."""
    frames = []
    for task in tasks:
        s = pd.read_csv(out_dir / task / "summary.csv")
        s = s[s["delta_diff"].notna()].copy()
        s.insert(0, "task", task)
        frames.append(s)
    cols = ["task", "arm", "primary", "seeds", "items", "delta_diff", "delta_se", "delta_lo", "delta_hi"]
    cols += ["delta_p_adj", "delta_verdict", "delta_status"]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return df[[c for c in cols if c in df]]


def pooled(rows: pd.DataFrame, sesoi: float, alpha: float) -> pd.DataFrame:
    """Each arm pooled over the tasks where its comparison could be decided; Holm over the primary arms."""
    out = []
    for arm, g in rows.groupby("arm", sort=False):
        usable = g[g["delta_status"].isin(DECIDABLE) & g["delta_se"].notna()]
        p = meta.pool(usable["delta_diff"], usable["delta_se"], sesoi=sesoi, alpha=alpha)
        left_out = sorted(set(g["task"]) - set(usable["task"]))
        out.append(
            {
                "arm": arm, "primary": bool(g["primary"].any()), "tasks": p.k, "left_out": ", ".join(left_out),
                "mean": p.mean, "lo": p.lo, "hi": p.hi, "lo90": p.lo90, "hi90": p.hi90, "p": p.p, "df": p.df,
                "tau2": p.tau2, "tau": math.sqrt(p.tau2) if p.tau2 == p.tau2 else math.nan, "i2": p.i2,
                "pred_lo": p.pred_lo, "pred_hi": p.pred_hi, "verdict": p.verdict,
            }
        )  # fmt: skip
    df = pd.DataFrame(out)
    if not len(df):
        return df
    df["p_adj"] = math.nan
    primary = df["primary"] & df["p"].notna()
    if primary.any():
        df.loc[primary, "p_adj"] = multipletests(df.loc[primary, "p"], method="holm")[1]
    # significance is read from the Holm-adjusted p within the primary family (as for one task)
    for i, r in df.iterrows():
        p_use = r["p_adj"] if r["primary"] else r["p"]
        if r["verdict"] in (BETTER, WORSE, BETTER_SMALL, WORSE_SMALL) and not p_use < alpha:
            equivalent = -sesoi < r["lo90"] and r["hi90"] < sesoi
            df.loc[i, "verdict"] = EQUIVALENT if equivalent else INCONCLUSIVE
    return df


def heatmap(rows: pd.DataFrame, pool: pd.DataFrame, path: Path) -> Path | None:
    """Task x arm effects (EM points) with their intervals and verdicts, the pooled row last."""
    from ablate.report.figures import plt

    if not len(rows):
        return None
    arms = list(dict.fromkeys(rows["arm"]))
    tasks = list(dict.fromkeys(rows["task"]))
    cells = {
        (r.task, r.arm): (r.delta_diff, r.delta_lo, r.delta_hi, r.delta_verdict) for r in rows.itertuples()
    }
    cells |= {("pooled", r.arm): (r.mean, r.lo, r.hi, r.verdict) for r in pool.itertuples()}
    labels = [*tasks, "pooled"]
    grid = [[100 * cells.get((t, a), (math.nan,) * 4)[0] for a in arms] for t in labels]
    lim = max(1.0, max((abs(x) for row in grid for x in row if x == x), default=1.0))
    fig, ax = plt.subplots(figsize=(2.2 + 2.0 * len(arms), 1.2 + 0.8 * len(labels)))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, t in enumerate(labels):
        for j, a in enumerate(arms):
            d, lo, hi, v = cells.get((t, a), (math.nan,) * 4)
            text = "n/a" if d != d else f"{pts(d)}\n[{pts(lo)}..{pts(hi)}]\n{v}"
            dark = d == d and abs(100 * d) > 0.6 * lim  # RdBu's ends: black text would not read
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.axhline(len(tasks) - 0.5, color="k", lw=1)
    fig.colorbar(im, ax=ax, label="test EM vs baseline (points)")
    ax.set_title("Effect over the baseline per task (95% CI), and pooled")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def prediction(lo: float, hi: float, tasks: int) -> str:
    """A prediction interval in EM points, cut to what a difference of two rates can be (-100..+100):
    ``stats.meta`` gives it on the t scale with k-2 degrees of freedom, which with 3 tasks (t_1 =
    12.7) easily reaches past the possible; the raw bounds stay in ``pooled.csv``."""
    if lo <= -1 and hi >= 1:
        return f"anything from -100 to +100 (t with {int(tasks) - 2} df over {int(tasks)} tasks: no prediction yet)"
    return f"[{pts(max(lo, -1.0))}..{pts(min(hi, 1.0))}]"


def _tables(rows: pd.DataFrame, pool: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    task_table = pd.DataFrame(
        {
            "task": rows["task"],
            "arm": rows["arm"],
            "seeds": rows["seeds"],
            "Δ EM vs baseline [95% CI]": [
                f"{pts(d)} [{pts(lo)}..{pts(hi)}]"
                for d, lo, hi in zip(rows["delta_diff"], rows["delta_lo"], rows["delta_hi"], strict=True)
            ],
            "p (Holm, within task)": [fmt_p(p) for p in rows["delta_p_adj"].astype(float)],
            "verdict": rows["delta_verdict"],
        }
    )
    pool_table = pd.DataFrame(
        {
            "arm": pool["arm"],
            "tasks pooled": pool["tasks"],
            "pooled Δ EM [95% CI]": [
                f"{pts(m)} [{pts(lo)}..{pts(hi)}]"
                for m, lo, hi in zip(pool["mean"], pool["lo"], pool["hi"], strict=True)
            ],
            "p (Holm)": [fmt_p(p) if p == p else "secondary" for p in pool["p_adj"]],
            "tau (points)": [pts(t, sign=False) for t in pool["tau"]],
            "I²": [f"{100 * i:.0f}%" if i == i else "n/a" for i in pool["i2"]],
            "new task: 95% prediction interval": [
                "needs 3 tasks" if lo != lo else prediction(lo, hi, k)
                for lo, hi, k in zip(pool["pred_lo"], pool["pred_hi"], pool["tasks"], strict=True)
            ],
            "verdict": pool["verdict"],
            "left out (no variation)": pool["left_out"].replace("", "-"),
        }
    )
    return task_table, pool_table


def _words(pool: pd.DataFrame, baseline: str, n_tasks: int) -> list[str]:
    lines = []
    for r in pool.itertuples():
        spread = (
            f"the true effect moves by about {pts(r.tau, sign=False)} points from task to task (tau; I² {100 * r.i2:.0f}%)"
            if r.tau == r.tau and r.tau > 0
            else "no spread between tasks beyond their own noise was found (tau² = 0)"
        )
        pred = (
            ""
            if r.pred_lo != r.pred_lo
            else f"; on a new task expect {prediction(r.pred_lo, r.pred_hi, r.tasks)}"
        )
        lines.append(
            f"{r.arm} vs {baseline}, pooled over {r.tasks} of {n_tasks} tasks: {r.verdict}, {pts(r.mean)} EM "
            f"[{pts(r.lo)}..{pts(r.hi)}]; {spread}{pred}."
        )
    return lines


def build_task_report(
    study: str, tasks: list[str], storage: str, tracking_uri: str | None, out_dir: Path,
    baseline: str = BASE, alpha: float = 0.05,
) -> Path:  # fmt: skip
    """Every task's report in ``out_dir/<task>/``, then the pooled report in ``out_dir``."""
    from ablate.report import build_report

    out_dir = Path(out_dir)
    sesoi = math.nan
    for task in tasks:
        build_report(
            task_study(study, task), storage, tracking_uri, out_dir / task, baseline=baseline, alpha=alpha
        )
        sesoi = json.loads((out_dir / task / "verdict.json").read_text())["sesoi"]
    rows = per_task(study, tasks, out_dir)
    pool = pooled(rows, sesoi, alpha)
    rows.to_csv(out_dir / "tasks.csv", index=False)
    pool.to_csv(out_dir / "pooled.csv", index=False)
    fig = heatmap(rows, pool, out_dir / "figures" / "task_heatmap.png")
    task_table, pool_table = _tables(rows, pool)
    words = _words(pool, baseline, len(tasks))
    head = (
        f"Study `{study}` over {len(tasks)} tasks ({', '.join(tasks)}), each its own study `{study}.<task>` "
        f"with its own search and replication of every arm and its own report (linked below). An arm's "
        f"effect over `{baseline}` is pooled by a random-effects meta-analysis of its per-task paired "
        "effects (Paule-Mandel tau², Hartung-Knapp-Sidik-Jonkman interval with k-1 degrees of freedom); "
        "tau is the standard deviation of the true effect across tasks, I² the share of the spread of the "
        "task effects that is not their own noise, and the prediction interval where a new task's effect "
        f"would lie. The pooled primary family is Holm-adjusted at alpha={alpha:g}; the verdict words follow "
        f"the rules of one comparison (equivalent: the 90% interval inside ±{100 * sesoi:.1f} EM). {HARNESS}"
    )
    md = [f"# Ablation report: {study} (over tasks)", "", head, "", "## Pooled verdict", ""]
    md += [f"- {w}" for w in words] + ["", pool_table.to_markdown(index=False), ""]
    if fig is not None:
        md += ["## Effect per task and arm", "", f"![task x arm]({fig.relative_to(out_dir).as_posix()})", ""]
    md += ["## Verdict per task", "", task_table.to_markdown(index=False), ""]
    md += ["Each task's full report: " + ", ".join(f"[{t}]({t}/report.md)" for t in tasks) + ".", ""]
    (out_dir / "report.md").write_text("\n".join(md), encoding="utf-8")
    e = html.escape
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ablate report: {e(study)}</title></head><body>",
        f"<h1>Ablation report: {e(study)} (over tasks)</h1><p>{e(head).replace('`', '')}</p>",
        "<h2>Pooled verdict</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in words) + "</ul>",
        pool_table.to_html(index=False, border=0, table_id="pooled"),
    ]
    if fig is not None:
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        page.append(
            f"<h2>Effect per task and arm</h2><img alt='task x arm' src='data:image/png;base64,{data}'>"
        )
    page += ["<h2>Verdict per task</h2>", task_table.to_html(index=False, border=0, table_id="tasks")]
    page.append(
        "<p>" + ", ".join(f"<a href='{e(t)}/report.html'>{e(t)}</a>" for t in tasks) + "</p></body></html>"
    )
    (out_dir / "report.html").write_text("\n".join(page), encoding="utf-8")
    return out_dir
