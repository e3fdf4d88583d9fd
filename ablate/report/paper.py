"""Tables to paste elsewhere: ``table.tex`` (booktabs, for a paper) and ``table.md`` (compact, for a
README), from the same per-arm numbers as the report (``summary.csv``), so they never disagree.

One row per arm: trainable parameters, test EM with its 95% interval, the difference from the
baseline with its interval, the p-value as the report uses it (Holm-adjusted within the primary
family, unadjusted for secondary arms, marked), the verdict word and the seeds.
"""

from __future__ import annotations

import math

from ablate import stats
from ablate.report.summary import Summary, fmt_p, pts

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
LATEX_SPECIAL |= {
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": "$<$",
    ">": "$>$",
}


def tex(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def rows(s: Summary) -> list[dict[str, str]]:
    out = []
    for arm, r in s.numbers.iterrows():
        c = s.comparisons.get(arm)
        params = r.get("trainable_params", math.nan)
        em = (
            "-"
            if not r["seeds"]
            else f"{pts(r['em_mean'], False)} [{pts(r['em_lo'], False)}, {pts(r['em_hi'], False)}]"
        )
        if c is None:
            diff, p, verdict = "baseline", "", ""
        else:
            diff = "-" if c.status == stats.NO_DATA else f"{pts(c.diff)} [{pts(c.lo)}, {pts(c.hi)}]"
            primary = c.primary and not c.sequential
            p = fmt_p(c.p_adj if primary else c.p) + ("" if primary else "*")
            verdict = (
                c.verdict if c.status in stats.DECIDABLE else f"no verdict ({c.status.replace('_', ' ')})"
            )
        out.append(
            {
                "arm": str(arm),
                "params": "-" if params != params else f"{int(params):,}",
                "em": em,
                "diff": diff,
                "p": p,
                "verdict": verdict,
                "seeds": str(int(r["seeds"])),
            }
        )
    return out


def latex(s: Summary, study: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), EM in points."""
    head = ["Arm", "Trainable params", "Test EM [95\\% CI]", f"$\\Delta$ vs {tex(s.baseline)} [95\\% CI]"]
    head += ["$p$ (Holm)", "Verdict", "Seeds"]
    lines = [
        "% ablate report: " + tex(study) + " (generated; EM in points, * unadjusted p of a secondary arm)",
        "\\begin{table}[t]",
        "\\centering",
        "\\begin{tabular}{lrlllll}",
        "\\toprule",
        " & ".join(head) + " \\\\",
        "\\midrule",
    ]
    for r in rows(s):
        cells = [r["arm"], r["params"], r["em"], r["diff"], r["p"], r["verdict"], r["seeds"]]
        lines.append(" & ".join(tex(c) for c in cells) + " \\\\")
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{{tex(study)}: test exact match (points) of each arm and its difference from "
        f"{tex(s.baseline)}, paired over seeds and test items; $p$ Holm-adjusted over the primary family "
        f"($\\alpha={s.alpha:g}$; * unadjusted, secondary); equivalence margin $\\pm{100 * s.sesoi:.1f}$ points.}}",
        f"\\label{{tab:{tex(study).replace(chr(92), '')}}}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def markdown(s: Summary) -> str:
    """The compact table for a README: arm, params, EM, difference, p, verdict, seeds."""
    head = [
        "arm",
        "trainable params",
        "test EM [95% CI]",
        f"Δ vs {s.baseline} [95% CI]",
        "p (Holm)",
        "verdict",
        "seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows(s):
        lines.append(
            "| " + " | ".join(r[k] for k in ("arm", "params", "em", "diff", "p", "verdict", "seeds")) + " |"
        )
    return "\n".join(lines) + "\n"
