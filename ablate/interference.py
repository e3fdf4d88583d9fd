"""Do LoRA and X interfere? Compare LoRA's weight update trained alone and trained beside X.

For one replicate seed, the combination's own LoRA settings trained alone and the LoRA+X
arm start from the same data order; this module compares their learned LoRA updates
dW = s * B @ A (s = alpha/r, or alpha/sqrt(r) with rsLoRA) on every target matrix
both runs adapted: the cosine similarity (same direction?) and the norm ratio
(does X take over part of the work, ratio < 1, or push LoRA harder, > 1).

The study records these figures for every seed (with X vs alone) and every pair of seeds of
LoRA alone (the reseed reference), so the report only reads numbers;
``ablate.stats.similarity`` turns them into an interval. Inner products use the low-rank factors,
<s1 B1 A1, s2 B2 A2>_F = s1 s2 sum((B1^T B2) * (A1 A2^T)), so no d_out x d_in
matrix is ever formed. With DoRA the magnitude vectors are left out: the figure
is about the low-rank direction.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_A, _B = ".lora_A.", ".lora_B."


def _factors(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, tuple]:
    """target matrix name -> (scale, A, B) in float64, from a saved ``lora`` component."""
    r, alpha = int(meta["r"]), float(meta["alpha"])
    scale = alpha / (math.sqrt(r) if meta.get("rslora") else r)
    out: dict[str, tuple] = {}
    for key, a in state.items():
        if _A not in key:
            continue
        module = key.split(_A)[0]
        b = state[key.replace(_A, _B)]
        out[module] = (scale, a.double(), b.double())
    return out


def _inner(x: tuple, y: tuple) -> float:
    (s1, a1, b1), (s2, a2, b2) = x, y
    return float(s1 * s2 * ((b1.T @ b2) * (a1 @ a2.T)).sum())


def update_similarity(
    alone: Mapping[str, torch.Tensor],
    alone_meta: Mapping[str, Any],
    combo: Mapping[str, torch.Tensor],
    combo_meta: Mapping[str, Any],
) -> dict[str, float] | None:
    """Cosine and norm ratio of LoRA's update, combination vs alone, over the shared targets.

    ``cos`` and ``norm_ratio`` treat all shared matrices as one long vector;
    ``cos_mean`` averages the per-matrix cosines. None when no target matrix is shared
    or either update is exactly zero.
    """
    fa, fc = _factors(alone, alone_meta), _factors(combo, combo_meta)
    shared = sorted(set(fa) & set(fc))
    if not shared:
        return None
    dot = na = nc = 0.0
    cosines = []
    for m in shared:
        d, a2, c2 = _inner(fa[m], fc[m]), _inner(fa[m], fa[m]), _inner(fc[m], fc[m])
        dot, na, nc = dot + d, na + a2, nc + c2
        if a2 > 0 and c2 > 0:
            cosines.append(d / math.sqrt(a2 * c2))
    if na <= 0 or nc <= 0:
        return None
    return {
        "cos": dot / math.sqrt(na * nc),
        "cos_mean": sum(cosines) / len(cosines) if cosines else math.nan,
        "norm_ratio": math.sqrt(nc / na),
        "n_matrices": float(len(shared)),
    }


def load_lora(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The ``lora`` tensors and config of a saved component directory (None without LoRA)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / "components.json").read_text())
    if "lora" not in meta:
        return None
    flat = load_file(str(directory / "components.safetensors"))
    state = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("lora/")}
    return state, meta["lora"]


def run_lora(client: Any, run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``load_lora`` of one MLflow run's logged ``components`` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_lora(client.download_artifacts(run_id, "components", tmp))


def lora_similarity(tracking_uri: str, run_alone: str, run_combo: str) -> dict[str, float] | None:
    """``update_similarity`` of two MLflow runs' logged ``components`` artifacts."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    loaded = [run_lora(client, run_id) for run_id in (run_alone, run_combo)]
    if any(x is None for x in loaded):
        return None
    (sa, ma), (sc, mc) = loaded
    return update_similarity(sa, ma, sc, mc)
