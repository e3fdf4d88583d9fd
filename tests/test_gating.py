"""Learned gates (UniPELT): each gate scales exactly its component's contribution, per token, and
the mean gate per layer that a trial records comes from the gates' own evaluation outputs.

The component contract (closed forms, gradients, knockout, save/load, detach) runs for gated arms
in the component table of ``test_components.py``; these tests check what a gate computes."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate.cli import CONF, normalize_overrides
from ablate.components import build_configs
from ablate.components.gate import Gate, layer_means
from ablate.components.stack import attach
from ablate.errors import ConfigError
from ablate.metrics import evaluate
from tests.test_components import batch, logits  # noqa: F401  (batch is a fixture)


def _random_gate(gate: Gate, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gate.proj.weight.copy_(torch.randn(gate.proj.weight.shape, generator=g))
        gate.proj.bias.fill_(0.3)


def test_gated_lora_update_is_scaled_per_token(tiny_bases):
    """layer(x) = W x + g(x) * s * B A x, with g = sigmoid(w_g . x + b_g) per token."""
    model = tiny_bases["none"].model
    stack = attach(model, build_configs(("lora",), {"lora": {"gate": True, "dropout": 0.0, "r": 4}}))
    try:
        layer = model.model.layers[0].self_attn.q_proj
        with torch.no_grad():
            layer.lora_B["ablate"].weight.normal_()
        gate = layer.lora_gate["ablate"]
        _random_gate(gate, 0)
        x = torch.randn(2, 5, 64)
        with torch.no_grad():
            got = layer(x)
            a, b = layer.lora_A["ablate"].weight, layer.lora_B["ablate"].weight
            g = torch.sigmoid(x @ gate.proj.weight.T + gate.proj.bias)
            want = layer.get_base_layer()(x) + g * (x @ a.T @ b.T) * layer.scaling["ablate"]
        assert g.std() > 0.05  # the gate really varies per token here
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        stack.detach()


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_gated_adapter_output_is_scaled_per_token(mode, tiny_bases):
    """FFN site: out + g(x) * f(out) (serial) or out + g(x) * f(x) (parallel); g reads the input x."""
    model = tiny_bases["none"].model
    cfg = {"adapter": {"gate": True, "mode": mode, "placement": "ffn", "scaling": 2.0}}
    stack = attach(model, build_configs(("adapter",), cfg))
    try:
        layer = model.model.layers[1]
        site = layer.ablate_adapter["ffn"]
        with torch.no_grad():
            site.up.weight.normal_()
        _random_gate(site.gate, 1)
        x = torch.randn(2, 5, 64)
        with torch.no_grad():
            got = layer.mlp(x)
            with stack.knocked_out(["adapter"]):
                out = layer.mlp(x)
            h = out if mode == "serial" else x
            f = site.up(torch.relu(site.down(h))) * 2.0
            g = torch.sigmoid(x @ site.gate.proj.weight.T + site.gate.proj.bias)
        torch.testing.assert_close(got, out + g * f, rtol=1e-5, atol=1e-5)
    finally:
        stack.detach()


def test_gated_prefix_scales_the_prefix_share_of_each_query():
    """Attention with prefix keys/values P and gate g_i per query i:
    out_i = g_i * sum_p a_ip v_p + sum_j a_ij v_j, a = softmax over [prefix; causal real keys]."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import ablate.components.prefix.layers  # noqa: F401  (registers the attention functions)

    torch.manual_seed(0)
    b, heads, kv_heads, q_len, p_len, d = 2, 4, 2, 6, 3, 8
    query = torch.randn(b, heads, q_len, d)
    key, value = torch.randn(b, kv_heads, q_len, d), torch.randn(b, kv_heads, q_len, d)
    prefix = torch.randn(1, 2, kv_heads, p_len, d)  # (layers, k/v, kv_heads, P, head_dim)
    gate = torch.rand(b, q_len, 1)

    class Attn(torch.nn.Module):
        layer_idx, num_key_value_groups, is_causal = 0, heads // kv_heads, True

    module = Attn().eval()
    object.__setattr__(module, "_ablate_prefix", type("Enc", (), {"current": prefix})())
    object.__setattr__(module, "_ablate_prefix_gate", gate)
    fn = ALL_ATTENTION_FUNCTIONS["ablate_prefix_sdpa"]
    got, _ = fn(module, query, key, value, None, scaling=d**-0.5, dropout=0.0)
    assert "_ablate_prefix_gate" not in module.__dict__  # read once, never kept

    rep = heads // kv_heads
    k_all = torch.cat([prefix[0, 0].expand(b, -1, -1, -1), key], 2).repeat_interleave(rep, 1)
    v_all = torch.cat([prefix[0, 1].expand(b, -1, -1, -1), value], 2).repeat_interleave(rep, 1)
    scores = query @ k_all.transpose(-1, -2) * d**-0.5
    causal = torch.ones(q_len, q_len, dtype=torch.bool).tril()
    visible = torch.cat([torch.ones(q_len, p_len, dtype=torch.bool), causal], 1)
    a = scores.masked_fill(~visible, -math.inf).softmax(-1)
    share_p = a[..., :p_len] @ v_all[..., :p_len, :]
    share_x = a[..., p_len:] @ v_all[..., p_len:, :]
    want = (gate[:, None] * share_p + share_x).transpose(1, 2)  # (b, q, heads, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    object.__setattr__(module, "_ablate_prefix_gate", torch.ones(b, q_len, 1))  # g = 1: ungated prefix
    ungated, _ = fn(module, query, key, value, None, scaling=d**-0.5, dropout=0.0)
    torch.testing.assert_close(ungated, (share_p + share_x).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_gated_prefix_at_g_one_is_the_ungated_prefix(tiny_bases, batch):  # noqa: F811
    """On the model: a prefix whose gates saturate at 1 gives the ungated prefix's logits."""
    model = tiny_bases["none"].model
    plain = attach(model, build_configs(("prefix",), {"prefix": {"length": 4}}), 200)
    torch.manual_seed(0)
    with torch.no_grad():
        plain["prefix"].parameters()[0].normal_()
    state = plain.state_dict()["prefix"]
    reference = logits(model, batch)
    plain.detach()
    gated = attach(model, build_configs(("prefix",), {"prefix": {"length": 4, "gate": True}}), 200)
    try:
        with torch.no_grad():
            for gate in model.ablate_prefix.gates:
                gate.proj.bias.fill_(40.0)  # sigmoid(40) == 1 in float32
        own = gated.state_dict()["prefix"]
        gated.load_state_dict({"prefix": {**own, **state}})
        torch.testing.assert_close(logits(model, batch), reference, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for gate in model.ablate_prefix.gates:
                gate.proj.bias.fill_(-40.0)  # g = 0: the prefix still takes attention, adds nothing
        assert not torch.allclose(logits(model, batch), reference, atol=1e-4)
    finally:
        gated.detach()


def test_gate_means_come_from_evaluation_forwards_only(tiny_bases, batch):  # noqa: F811
    """Every gate of every gated component reports one mean per layer; only eval-mode forwards
    count; reset clears them."""
    model = tiny_bases["none"].model
    cfgs = build_configs(
        ("lora", "adapter", "prefix"), {n: {"gate": True} for n in ("lora", "adapter", "prefix")}
    )
    stack = attach(model, cfgs, 200)
    try:
        biases = {"lora": -1.0, "adapter": 0.0, "prefix": 2.0}
        with torch.no_grad():
            for a in stack:
                for _, gate in a._gates():
                    gate.proj.bias.fill_(biases[a.name])
        was = model.training
        model.train()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model.train(was)
        assert stack.gate_metrics() == {}  # training forwards are not recorded
        evaluate(model, [batch], torch.device("cpu"))  # eval mode, as a trial's evaluation runs
        got = stack.gate_metrics()
        want = {f"gate/{n}/{i:02d}": 1 / (1 + math.exp(-b)) for n, b in biases.items() for i in range(2)}
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-6), k
        stack.reset_gates()
        assert stack.gate_metrics() == {}
    finally:
        stack.detach()


def test_layer_means_pool_the_gates_of_a_layer():
    a, b, c = Gate(4).eval(), Gate(4).eval(), Gate(4).eval()
    a.total, a.count = 3.0, 4  # 0.75 over 4 values
    b.total, b.count = 1.0, 4  # 0.25 over 4
    c.total, c.count = 0.0, 0  # saw nothing
    assert layer_means([(0, a), (0, b), (1, c)]) == {0: 0.5}


def test_lora_gate_with_dora_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        build_configs(("lora",), {"lora": {"gate": True, "dora": True}})
    assert err.value.one_line() == "error: peft.lora.gate=True: cannot be combined with dora"


def test_a_trial_records_the_trained_gates(tiny_bases):
    """``ablate train peft=unipelt``: the run's metrics hold gate/<component>/<layer> for each gated
    component and layer, from the trained model (moved off the 0.5 every gate starts at)."""
    from ablate.run import prepare_data, run_trial
    from ablate.schema import TrialConfig
    from ablate.tracking import Tracker

    args = normalize_overrides(["peft=unipelt", "model=tiny", "budget=smoke", "tracking=none"])
    args += ["train.steps=12", "peft.lora.lr=1e-2", "peft.adapter.lr=1e-2"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = TrialConfig.from_dict(OmegaConf.to_container(compose("config", overrides=args), resolve=True))
    assert cfg.arm == ("lora", "adapter", "prefix") and all(c.gate for c in cfg.peft.values())
    base = tiny_bases["none"]
    metrics = run_trial(cfg, base, prepare_data(cfg.data, base.tokenizer), Tracker()).metrics
    gates = {k: v for k, v in metrics.items() if k.startswith("gate/")}
    assert set(gates) == {f"gate/{c}/{i:02d}" for c in ("lora", "adapter", "prefix") for i in range(2)}
    assert all(0 < v < 1 for v in gates.values())
    assert max(abs(v - 0.5) for v in gates.values()) > 1e-3, gates


def test_gated_study_reports_the_gates_of_its_trained_replicates(tmp_path, monkeypatch, capsys):
    """``ablate study=gated`` on tiny: only the gated arm's replicates carry gate metrics, and the
    report's heatmap and its note are built from exactly those recorded numbers."""
    import csv

    from tests.test_cli import run_cli
    from tests.test_study import storage_studies

    monkeypatch.chdir(tmp_path)
    args = ["study=gated", "model=tiny", "budget=smoke", "tracking=none", "study.n_trials=1"]
    code, out, err = run_cli([*args, "study.seeds=2", "study.matched=false"], capsys)
    assert code == 0, err
    studies = storage_studies("sqlite:///studies/gated.db")
    assert studies["gated/unipelt"].user_attrs["fixed"] == {
        "adapter": {"gate": True},
        "lora": {"gate": True},
        "prefix": {"gate": True},
    }
    reps = studies["gated/unipelt"].user_attrs["replicates"]
    assert sorted(reps) == ["1", "2"]
    keys = {f"gate/{c}/{i:02d}" for c in ("lora", "adapter", "prefix") for i in range(2)}
    for metrics in reps.values():
        assert keys <= set(metrics) and all(0 < metrics[k] < 1 for k in keys)
    for arm in ("lora", "lora+adapter+prefix"):
        for metrics in studies[f"gated/{arm}"].user_attrs["replicates"].values():
            assert not any(k.startswith("gate/") for k in metrics)
    report = (tmp_path / "reports/gated/report.md").read_text()
    assert "Learned gates" in report and (tmp_path / "reports/gated/figures/gates.png").is_file()
    mean = sum(m["gate/prefix/00"] + m["gate/prefix/01"] for m in reps.values()) / 4
    assert f"prefix {mean:.2f}" in report
    with open(tmp_path / "reports/gated/summary.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["arm"] == "unipelt")
    assert "fixed adapter: gate=True; lora: gate=True; prefix: gate=True" in row["best_config"]
