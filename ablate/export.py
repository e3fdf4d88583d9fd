"""Take the winner away: one arm's trained components out of a finished study.

    ablate export study=NAME [arm=ARM] [seed=S] out=DIR [merge=true] [overwrite=true]

The arm defaults to the winner (the primary-family arm that beats the baseline by
the most, else the baseline itself) and the seed to the replicate with the best
validation objective (the verdict reads test; choosing a seed never does). The
weights are the ``components`` artifact of that seed's MLflow run, re-attached to
the base the run recorded, and the export is checked against them before it is
moved into place: the logits of every format written must equal ablate's on the
same validation items (``check`` in ``ablate.json`` and the model card).

Every export holds ``components.safetensors`` + ``components.json`` (ablate's own
layout, re-attached by ``ablate.load(DIR, base)``), ``ablate.json`` (the resolved
run config, the choice and the check), the tokenizer and a model card
(``README.md``). A LoRA-only arm adds a standard PEFT adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``); with ``merge=true`` the
directory holds the merged full model instead (``AutoModelForCausalLM``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError, redact
from ablate.schema import ExportConfig

EXPORT_FILE = "ablate.json"
FORMAT = "ablate-export/1"
N_CHECK = 8  # validation items the round trip is checked on
#: the adapter and ablate round trips compute exactly what the study's run computed; anything
#: beyond float noise (relative to the logits' scale) means the export is wrong, so it is refused
TOLERANCE = 1e-4
ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass
class Choice:
    """Which arm and seed to export, why, and the numbers the model card shows."""

    study: str
    arm: str
    seed: str
    run_id: str
    components: list[str]
    quant: str
    baseline: str
    why_arm: str
    why_seed: str
    metrics: dict[str, Any]  # the chosen seed's recorded metrics
    row: dict[str, Any]  # the arm's row of the report's numbers (test EM with CI, delta, costs)
    verdict: list[str]  # the report's verdict lines about this arm
    best_config: dict[str, Any] = field(default_factory=dict)


def choose(study: str, storage: str, arm: str | None, seed: int | None, baseline: str = "lora") -> Choice:
    """Pick arm and seed from what the study recorded; a bad name or seed is a ``ConfigError``."""
    from ablate import stats
    from ablate.report.collect import collect
    from ablate.report.summary import summarise

    data = collect(study, storage, None)  # unknown study or storage: ConfigError naming it
    arms = list(data.arms.index)
    flagged = [a for a in arms if bool(data.arms.loc[a, "is_baseline"])]
    baseline = flagged[0] if flagged else baseline
    if arm is not None and arm not in arms:
        raise ConfigError("arm", arm, f"no such arm in study {study} (arms: {', '.join(arms)})")
    summary = summarise(data, baseline) if baseline in arms else None
    if arm is None:
        better = [
            a for a in (summary.primary if summary else []) if summary.comparisons[a].verdict == stats.BETTER
        ]
        if better:
            arm = max(better, key=lambda a: summary.comparisons[a].diff)
            why_arm = f"the winner: better than {baseline} in the primary family, by the most"
        else:
            arm = baseline
            why_arm = f"no arm beat the baseline {baseline} in the primary family, so the baseline"
    else:
        why_arm = f"chosen with arm={arm}"
    reps = data.studies[arm].user_attrs.get("replicates") or {}
    if not reps:
        raise ConfigError("arm", arm, f"has no replicate seeds recorded in study {study} yet")
    if seed is None:
        seed_key, why_seed = _best_seed(
            reps, data.arms.loc[arm, "objective"][0], data.arms.loc[arm, "directions"][0]
        )
    else:
        seed_key, why_seed = str(seed), f"chosen with seed={seed}"
        if seed_key not in reps:
            raise ConfigError(
                "seed", seed, f"arm {arm} has replicate seeds {', '.join(sorted(reps, key=int))}"
            )
    run_id = reps[seed_key].get("mlflow_run_id")
    if not run_id:
        raise ConfigError(
            "seed", seed_key, f"the run of arm {arm} was not recorded in MLflow (tracking=none)"
        )
    row: dict[str, Any] = {}
    lines: list[str] = []
    if summary is not None and arm in summary.numbers.index:
        row = {k: _plain_value(v) for k, v in summary.numbers.loc[arm].to_dict().items()}
        lines = [ln for ln in summary.verdict if ln.startswith((f"{arm} ", f"Baseline {arm}:", f"{arm}:"))]
    return Choice(
        study=study,
        arm=arm,
        seed=seed_key,
        run_id=run_id,
        components=list(data.arms.loc[arm, "components"]),
        quant=str(data.arms.loc[arm, "quant"]),
        baseline=baseline,
        why_arm=why_arm,
        why_seed=why_seed,
        metrics=dict(reps[seed_key]),
        row=row,
        verdict=lines,
        best_config=dict(data.arms.loc[arm, "best_config"] or {}),
    )


def _best_seed(reps: Mapping[str, Mapping[str, Any]], objective: str, direction: str) -> tuple[str, str]:
    """The seed with the best validation objective (``val_loss`` unless the study searched another);
    ties go to the lowest seed."""
    key = objective if objective.startswith("val_") else "val_loss"
    sign = -1.0 if direction == "maximize" and key == objective else 1.0
    scored = [(float(m[key]), int(s)) for s, m in reps.items() if _finite(m.get(key))]
    if not scored:
        first = min(reps, key=int)
        return first, f"no seed recorded {key}, so the lowest seed"
    value, best = min(scored, key=lambda vs: (sign * vs[0], vs[1]))
    return str(best), f"best validation {key}={value:.4f} of seeds {', '.join(sorted(reps, key=int))}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


# -------------------------------------------------------------------------------------------- export


@dataclass
class Exported:
    out: Path
    choice: Choice
    files: list[str]
    check: dict[str, float]
    merged: bool

    def summary(self) -> str:
        c = self.choice
        lines = [
            f"exported {c.arm} seed {c.seed} of study {c.study} to {self.out}",
            f"  arm: {c.why_arm}; seed: {c.why_seed}",
            f"  MLflow run {c.run_id}; files: {', '.join(self.files)}",
        ]
        lines += [f"  round trip {k}: max |Δlogits| {v:.3g}" for k, v in self.check.items()]
        return "\n".join(lines)


def export(
    study: str,
    storage: str,
    tracking_uri: str | None,
    opts: ExportConfig,
    *,
    baseline: str = "lora",
    question: str = "",
) -> Exported:
    """Write the chosen arm's components to ``opts.out``; nothing is written unless all of it works."""
    out = Path(str(opts.out))
    if out.exists() and not out.is_dir():
        raise ConfigError("out", opts.out, "is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not opts.overwrite:
        raise ConfigError("out", opts.out, "exists and is not empty (overwrite=true replaces it)")
    if tracking_uri is None:
        raise ConfigError("tracking.backend", "none", "export reads the trained weights from MLflow runs")
    choice = choose(study, storage, opts.arm, opts.seed, baseline)
    gated = bool((choice.best_config.get("lora") or {}).get("gate"))
    if opts.merge and (choice.components != ["lora"] or gated):
        raise ConfigError(
            "merge", True, f"arm {choice.arm} is not plain LoRA: only LoRA merges into the base"
        )
    if opts.merge and choice.quant != "none":
        raise ConfigError(
            "merge",
            True,
            f"arm {choice.arm} was trained on a {choice.quant} base: export its adapter instead",
        )
    with tempfile.TemporaryDirectory() as tmp:
        comp_dir, trial_cfg = _download(tracking_uri, choice, Path(tmp))
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            check = _write(staging, comp_dir, trial_cfg, choice, opts.merge, question, tracking_uri)
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Exported(out, choice, sorted(p.name for p in out.iterdir()), check, opts.merge)


def _download(tracking_uri: str, choice: Choice, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The run's ``components`` artifact and its recorded config (``config.yaml``)."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(choice.run_id)
    except MlflowException:
        raise ConfigError(
            "tracking.uri",
            redact(tracking_uri),
            f"has no run {choice.run_id} (arm {choice.arm} seed {choice.seed})",
        ) from None
    names = {a.path for a in client.list_artifacts(choice.run_id)}
    if "components" not in names or "config.yaml" not in names:
        raise ConfigError(
            "seed",
            choice.seed,
            f"run {choice.run_id} has no components artifact (eval.save_components=false)",
        )
    comp = Path(client.download_artifacts(choice.run_id, "components", str(tmp)))
    cfg = yaml.safe_load(Path(client.download_artifacts(choice.run_id, "config.yaml", str(tmp))).read_text())
    return comp, cfg


def _arch(config: Any) -> dict[str, Any]:
    return {k: getattr(config, k, None) for k in ARCH_FIELDS}


def _write(
    staging: Path,
    comp_dir: Path,
    trial: dict[str, Any],
    choice: Choice,
    merge: bool,
    question: str,
    tracking_uri: str,
) -> dict[str, float]:
    import torch

    from ablate import components
    from ablate.components import lora
    from ablate.data import DataConfig, load_splits
    from ablate.data.tokenize import encode, make_batches
    from ablate.models import load_base
    from ablate.schema import ModelConfig, QuantConfig
    from ablate.schema.peft import LoraConfig

    model_cfg = ModelConfig.from_dict(trial["model"])
    base = load_base(model_cfg, QuantConfig.from_dict(trial["quant"]))
    data_cfg = DataConfig.from_dict(trial["data"])
    enc = encode(load_splits(data_cfg)["validation"][:N_CHECK], base.tokenizer, data_cfg.max_length)
    batch = make_batches(enc, N_CHECK, shuffle=False, seed=0, pad_id=base.tokenizer.pad_token_id)[0]
    model = base.model

    @torch.no_grad()
    def logits(m: Any) -> torch.Tensor:
        ids, mask = batch["input_ids"].to(base.device), batch["attention_mask"].to(base.device)
        return m(input_ids=ids, attention_mask=mask).logits.float().cpu()

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    # ablate's own outputs: the run's artifact on the recorded base, as the study evaluated it
    stack = components.load(model, comp_dir, data_cfg.max_length)
    model.eval()  # as the study evaluated it: dropout off
    ref = logits(model)
    with stack.knocked_out(stack.names):
        check = {"components_effect": diff(ref, logits(model))}  # > 0: the check below is not vacuous
    # LoRA alone, as peft knows it (ablate's optional LoRA gate is not a peft module)
    lora_only = stack.names == ("lora",) and not getattr(stack["lora"].cfg, "gate", False)
    peft_state = lora.peft_state(model) if lora_only else None
    stack.detach()

    if not merge:
        for name in ("components.safetensors", "components.json"):
            shutil.copy2(comp_dir / name, staging / name)
        meta = _meta(choice, trial, model, base.source, data_cfg.max_length, merged=False)
        (staging / EXPORT_FILE).write_text(json.dumps(meta, indent=2, default=str))
        restored = load(staging, model)
        check["ablate.load"] = diff(ref, logits(model))
        restored.detach()
    if lora_only:
        base_name = model_cfg.name_or_path if model_cfg.source == "pretrained" else base.source
        lora.save_peft(str(staging), LoraConfig.from_dict(trial["peft"]["lora"]), peft_state, base_name)
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, str(staging))
        check["peft"] = diff(ref, logits(peft_model))
        if merge:
            merged = peft_model.merge_and_unload()
            check["merged"] = diff(ref, logits(merged))
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (staging / name).unlink()
            merged.save_pretrained(staging)
            meta = _meta(choice, trial, merged, base.source, data_cfg.max_length, merged=True)
    scale = 1.0 + float(ref.abs().max())
    for key in ("ablate.load", "peft"):
        if key in check and check[key] > TOLERANCE * scale:
            raise RuntimeError(
                f"export round trip {key}: max |Δlogits| {check[key]:.3g} (logits up to {scale:.3g})"
            )
    meta["check"] = {**check, "items": len(enc)}
    (staging / EXPORT_FILE).write_text(json.dumps(meta, indent=2, default=str))
    base.tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(
        model_card(choice, trial, meta, question, merge, lora_only, tracking_uri), encoding="utf-8"
    )
    return check


def _meta(
    choice: Choice, trial: dict[str, Any], model: Any, source: str, max_length: int, *, merged: bool
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "merged": merged,
        "study": choice.study,
        "arm": choice.arm,
        "components": choice.components,
        "seed": int(choice.seed),
        "mlflow_run_id": choice.run_id,
        "why": {"arm": choice.why_arm, "seed": choice.why_seed},
        "base": {
            "name_or_path": trial["model"].get("name_or_path"),
            "source": trial["model"].get("source"),
            "weights": source,
            "quant": trial["quant"],
            "arch": _arch(model.config),
        },
        "max_length": max_length,
        "config": trial,  # the run's resolved config, as recorded
        "metrics": choice.metrics,
        "summary": choice.row,
    }


# ---------------------------------------------------------------------------------------------- load


def load(directory: str | Path, base: Any) -> Any:
    """Re-attach an export's components to ``base`` (a model, or ablate's ``Base``); returns the
    ``Stack`` (``stack.detach()`` removes them again). The base must have the recorded architecture."""
    from ablate import components
    from ablate.models import Base

    directory = Path(directory)
    model = base.model if isinstance(base, Base) else base  # (a transformers model has .model too)
    meta_path = directory / EXPORT_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("merged"):
        raise ValueError(
            f"{directory} holds a merged model: load it with AutoModelForCausalLM.from_pretrained"
        )
    if not (directory / "components.json").exists():
        raise FileNotFoundError(f"{directory}: no components.json (not an ablate export)")
    for key, want in (meta.get("base", {}).get("arch") or {}).items():
        have = getattr(model.config, key, None)
        if want is not None and have != want:
            raise ValueError(
                f"{directory} was trained on a base with {key}={want}; this base has {key}={have}"
            )
    training = model.training
    stack = components.load(model, directory, meta.get("max_length"))
    model.train(training)  # new modules start in training mode (dropout on): follow the base's mode
    return stack


# ------------------------------------------------------------------------------------------ model card


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
        f"On {check.get('items', N_CHECK)} validation items, the logits of each format written here against "
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
        f"| data | {data.get('name')}, {data.get('n_train')} train / {data.get('n_validation')} validation / "
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


__all__ = ["Choice", "ExportConfig", "Exported", "choose", "export", "load", "model_card"]
