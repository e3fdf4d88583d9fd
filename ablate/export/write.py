"""Writing an export: download the chosen run's components, re-attach, round-trip check, write."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.components import BASE
from ablate.errors import ConfigError, redact
from ablate.export.card import model_card
from ablate.export.choose import Choice, choose
from ablate.export.load import EXPORT_FILE, FORMAT, load
from ablate.schema import ExportConfig

N_CHECK = 8  # validation items the round trip is checked on
#: the adapter and ablate round trips compute exactly what the study's run computed; anything
#: beyond float noise (relative to the logits' scale) means the export is wrong, so it is refused
TOLERANCE = 1e-4
ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


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
    baseline: str = BASE,
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

    from ablate.components import stack as components
    from ablate.components.lora import LoraConfig
    from ablate.components.lora import layers as lora
    from ablate.data import DataConfig, load_splits
    from ablate.data.tokenize import encode, make_batches
    from ablate.models import load_base
    from ablate.schema import ModelConfig, QuantConfig

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

        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
