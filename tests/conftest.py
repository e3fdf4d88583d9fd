"""Shared fixtures: the tiny random Llama (fp32 and nf4), built from a config, never downloaded."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Keep test artefacts (the tiny checkpoint) out of the user's cache."""
    os.environ.setdefault("ABLATE_CACHE", str(tmp_path_factory.mktemp("ablate-cache")))


def load_tiny(quant: str = "none"):
    from ablate.models import load_base
    from ablate.schema import ModelConfig, QuantConfig

    model_cfg = ModelConfig.from_dict(
        {
            "source": "tiny",
            "name_or_path": "tiny",
            "dtype": "float32",
            "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
        }
    )
    qcfg = QuantConfig.from_dict({"method": quant, "double_quant": quant != "none"})
    return load_base(model_cfg, qcfg, torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_bases():
    """One base per quantisation, shared by every test (like a study worker shares its base)."""
    return {q: load_tiny(q) for q in ("none", "nf4")}
