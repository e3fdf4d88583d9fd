"""The model card (``README.md``) of an export: what was chosen and why, its numbers, how to load it."""

from __future__ import annotations

from typing import Any

from ablate.errors import redact
from ablate.export.choose import Choice, _finite


def _pts(x: Any, sign: bool = False) -> str:
    if not _finite(x):
        return "n/a"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _why_ablate(names: list[str]) -> str:
    extra = [c for c in names if c != "lora"]
    if not extra:
        return "This LoRA carries ablate's gate (peft.lora.gate), which PEFT does not know."
    why = "PEFT has no bottleneck adapters." if extra == ["adapter"] else ""
    if "lora" in names:
        return (
            f"This arm puts {' + '.join(names)} on one model, which PEFT's public API cannot do "
            f"(its mixed models take only LoRA-family types). {why}"
        ).strip()
    return f"ablate's own {' + '.join(extra)} implementation is not PEFT's. {why}".strip()


def _card_how_to_load(choice: Choice, load_from: str, merged: bool, lora_only: bool) -> list[str]:
    lines: list[str] = []
    if merged:
        lines += [
            "The LoRA update is merged into the base weights: a plain transformers model, no PEFT or ablate needed.",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(DIR)",
            "tokenizer = AutoTokenizer.from_pretrained(DIR)",
            "```",
        ]
    elif lora_only:
        lines += [
            "A standard PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`); ablate is not needed.",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"base = AutoModelForCausalLM.from_pretrained({load_from!r})",
            "model = PeftModel.from_pretrained(base, DIR)",
            "```",
            "",
            "The same weights in ablate's layout: `ablate.load(DIR, base)`.",
        ]
    else:
        lines += [
            f"{_why_ablate(choice.components)} So **every part of this export needs ablate to load**: "
            "`components.safetensors` holds all components' weights, `components.json` their configs.",
            "",
            "```python",
            "import ablate",
            "from transformers import AutoModelForCausalLM",
            f"base = AutoModelForCausalLM.from_pretrained({load_from!r})",
            "stack = ablate.load(DIR, base)  # attaches the components to `base` in place; stack.detach() removes them",
            "```",
        ]
    return lines


def _card_metrics(choice: Choice, r: dict[str, Any], m: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if r:
        lines.append(
            f"| test EM, this arm over {r.get('seeds')} seed(s) | {_pts(r.get('em_mean'))} "
            f"[{_pts(r.get('em_lo'))}..{_pts(r.get('em_hi'))}] |"
        )
        if choice.arm != choice.baseline and _finite(r.get("delta_diff")):
            lines.append(
                f"| Δ test EM vs {choice.baseline} | {_pts(r.get('delta_diff'), True)} "
                f"[{_pts(r.get('delta_lo'), True)}..{_pts(r.get('delta_hi'), True)}], {r.get('delta_verdict')} |"
            )
    lines += [
        f"| test EM, this seed | {_pts(m.get('test_em'))} |",
        f"| test loss, this seed | {m.get('test_loss', float('nan')):.4f} |",
        f"| validation loss / EM, this seed | {m.get('val_loss', float('nan')):.4f} / {_pts(m.get('val_em'))} |",
        f"| trainable parameters | {int(m.get('trainable_params', 0)):,} ({m.get('trainable_pct', float('nan')):.3f}% "
        "of the base) |",
    ]
    per = [f"{k.split('/', 1)[1]} {int(v):,}" for k, v in m.items() if k.startswith("params/")]
    if per:
        lines.append(f"| per component | {', '.join(per)} |")
    if choice.verdict:
        lines += ["", "Verdict of the study's report on this arm:", "", *[f"> {v}" for v in choice.verdict]]
    return lines


def _card_check(check: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Round-trip check",
        "",
        f"On {check.get('items', '?')} validation items, the logits of each format written here against "
        "ablate's model with the run's components (max |Δlogits|):",
        "",
    ]
    names = {"ablate.load": "`ablate.load(DIR, base)`", "peft": "`PeftModel.from_pretrained(base, DIR)`"}
    names["merged"] = "merged full model"
    lines += [f"- {names[k]}: {check[k]:.3g}" for k in ("ablate.load", "peft", "merged") if k in check]
    if "components_effect" in check:
        lines.append(
            f"- for scale, switching the components off moves the logits by up to {check['components_effect']:.3g}"
        )
    return lines


def model_card(
    choice: Choice,
    trial: dict[str, Any],
    meta: dict[str, Any],
    question: str,
    merged: bool,
    lora_only: bool,
    tracking_uri: str,
) -> str:
    """README.md of an export: what it is, how to load it, where it came from, how good it is."""
    base = meta["base"]
    pretrained = base["source"] == "pretrained"
    base_id = base["name_or_path"] if pretrained else f"tiny random Llama ({base['weights']})"
    load_from = base["name_or_path"] if pretrained else base["weights"]
    r, m = choice.row, choice.metrics
    quant = trial["quant"].get("method", "none")
    front = ["---", f"base_model: {base_id}" if pretrained else "base_model: null"]
    if lora_only and not merged:
        front.append("library_name: peft")
    front += ["tags:", "  - ablate", *[f"  - {c}" for c in choice.components], "---", ""]
    lines = [
        *front,
        f"# {choice.study}: {choice.arm}, seed {choice.seed}",
        "",
        f"Exported with `ablate export study={choice.study} arm={choice.arm} seed={choice.seed}` from MLflow run "
        f"`{choice.run_id}` ({redact(tracking_uri)}). Arm: {choice.why_arm}. Seed: {choice.why_seed}.",
        "",
        f"- Base model: `{base_id}`" + (f", quantised {quant}" if quant != "none" else ""),
        f"- Components: {' + '.join(choice.components)}",
        f"- Study question: {question or 'n/a'}",
        "",
        "## How to load",
        "",
        *_card_how_to_load(choice, load_from, merged, lora_only),
    ]
    lines += ["", "## Configuration", "", "| component | settings |", "|---|---|"]
    for comp, fields in (trial.get("peft") or {}).items():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        lines.append(f"| {comp} | {shown} |")
    train = trial.get("train") or {}
    data = trial.get("data") or {}
    lines += [
        f"| train | steps={train.get('steps')}, batch_size={train.get('batch_size')}, seed={train.get('seed')}, "
        f"precision={train.get('precision')} |",
        f"| data | {_task(data)}, {data.get('n_train')} train / {data.get('n_validation')} validation / "
        f"{data.get('n_test')} test, max_length={data.get('max_length')} |",
        "",
        "The full resolved configuration of the run is `config` in `ablate.json`.",
        "",
        "## Test metrics",
        "",
        "Exact match (EM) on the test split, in points; intervals are 95% CIs from the study's report "
        "(a t interval on the crossed seeds x test items variance, ablate.stats).",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += _card_metrics(choice, r, m)
    lines += _card_check(meta.get("check") or {})
    return "\n".join(lines) + "\n"


def _task(data: dict) -> str:
    """The task as trained: its name and the options that set it (``arithmetic`` with digits [2, 2]
    is the ``arithmetic_easy`` config, not the default 2-4 digits), or the file it came from."""
    options = data.get("task_options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in options.items())
    where = data.get("path") or data.get("hf_name")
    return f"{data.get('name')}" + (f" ({shown})" if shown else "") + (f" from {where}" if where else "")
