"""LoRA update similarity (alone vs beside X) against explicit d_out x d_in updates."""

from __future__ import annotations

import math

import pytest
import torch

from ablate.interference import load_lora, update_similarity


def _lora(modules: list[str], r: int, seed: int, scale_b: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        out[f"{m}.lora_A.ablate.weight"] = torch.randn(r, 12, generator=g)
        out[f"{m}.lora_B.ablate.weight"] = scale_b * torch.randn(10, r, generator=g)
    return out


def _explicit(state, meta) -> dict[str, torch.Tensor]:
    r = meta["r"]
    s = meta["alpha"] / (math.sqrt(r) if meta.get("rslora") else r)
    return {
        k.split(".lora_A.")[0]: s * state[k.replace(".lora_A.", ".lora_B.")].double() @ v.double()
        for k, v in state.items()
        if ".lora_A." in k
    }


CASES = [  # (alone modules, r, combo modules, r, rslora)
    (["l0.q", "l0.v", "l1.q"], 4, ["l0.q", "l0.v", "l1.q"], 4, False),
    (["l0.q", "l0.v"], 2, ["l0.q", "l0.v", "l0.up"], 8, False),
    (["l0.q"], 3, ["l0.q"], 5, True),
]


@pytest.mark.parametrize(("ma", "ra", "mc", "rc", "rs"), CASES)
def test_similarity_equals_the_explicit_updates(ma, ra, mc, rc, rs):
    sa, sc = _lora(ma, ra, 0), _lora(mc, rc, 1)
    meta_a, meta_c = {"r": ra, "alpha": 16.0, "rslora": rs}, {"r": rc, "alpha": 8.0, "rslora": rs}
    got = update_similarity(sa, meta_a, sc, meta_c)
    wa, wc = _explicit(sa, meta_a), _explicit(sc, meta_c)
    shared = sorted(set(wa) & set(wc))
    va = torch.cat([wa[m].flatten() for m in shared])
    vc = torch.cat([wc[m].flatten() for m in shared])
    assert got["n_matrices"] == len(shared)
    assert got["cos"] == pytest.approx(float(va @ vc / (va.norm() * vc.norm())), rel=1e-9)
    assert got["norm_ratio"] == pytest.approx(float(vc.norm() / va.norm()), rel=1e-9)
    per = [float(wa[m].flatten() @ wc[m].flatten() / (wa[m].norm() * wc[m].norm())) for m in shared]
    assert got["cos_mean"] == pytest.approx(sum(per) / len(per), rel=1e-9)


def test_same_direction_twice_the_size_and_no_shared_target():
    sa = _lora(["q", "v"], 4, 0)
    sc = {k: (2 * v if ".lora_B." in k else v) for k, v in sa.items()}
    meta = {"r": 4, "alpha": 8.0}
    got = update_similarity(sa, meta, sc, meta)
    assert got["cos"] == pytest.approx(1.0) and got["norm_ratio"] == pytest.approx(2.0)
    assert update_similarity(sa, meta, _lora(["up"], 4, 1), meta) is None
    zero = {k: (0 * v if ".lora_B." in k else v) for k, v in sa.items()}  # B = 0: LoRA at init
    assert update_similarity(zero, meta, sa, meta) is None


def test_load_lora_reads_what_components_save(tmp_path, tiny_bases):
    from ablate.components import stack as components

    base = tiny_bases["none"]
    cfgs = components.build_configs(("lora", "adapter"), {"lora": {"r": 4, "alpha": 8.0}, "adapter": {}})
    stack = components.attach(base.model, cfgs)
    try:
        with torch.no_grad():
            for n, p in stack["lora"].named_parameters():
                if "lora_B" in n:
                    p.normal_()
        components.save(stack, tmp_path)
        state, meta = load_lora(tmp_path)
        assert state.keys() == stack["lora"].state_dict().keys()
        assert meta["r"] == 4 and meta["alpha"] == 8.0
        got = update_similarity(state, meta, state, meta)
        assert got["cos"] == pytest.approx(1.0) and got["norm_ratio"] == pytest.approx(1.0)
    finally:
        stack.detach()
