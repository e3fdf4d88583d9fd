"""The CLI end to end on model=tiny: records, determinism, and every bad input failing cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.components import COMPONENTS

TINY = ["model=tiny", "budget=smoke"]


def override(base, *extra):
    """``base`` with the keys of ``extra`` replaced (a key given twice is refused by the CLI)."""
    keys = {a.split("=", 1)[0] for a in extra}
    return [a for a in base if a.split("=", 1)[0] not in keys] + list(extra)


def run_cli(args, capsys):
    """Run ``ablate ARGS`` in this process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["adamw", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_each_optimizer_descends_and_is_recorded(workdir, capsys, name):
    """train.optimizer: AdamW or QLoRA's paged AdamW (bitsandbytes); the loss of a least-squares
    problem falls under each, and a QLoRA run records which one it used."""
    import torch

    from ablate.train import PAGED, make_optimizer

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(64, 64))
    x, y = torch.randn(256, 64), torch.randn(256, 64)
    opt = make_optimizer([{"params": [w], "lr": 1e-2}], name)
    assert type(opt).__name__ == PAGED.get(name, "AdamW")
    losses = []
    for _ in range(20):
        loss = ((x @ w - y) ** 2).mean()
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.95 * losses[0], losses
    if name == "paged_adamw_8bit":  # end to end: a QLoRA run on the 4-bit base, recorded per run
        code, out, err = run_cli(
            ["train", *TINY, "peft=lora", "quant=nf4", f"train.optimizer={name}"], capsys
        )
        assert code == 0, err
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{Path.cwd()}/mlflow.db")
        run = client.search_runs([client.get_experiment_by_name("ablate-train").experiment_id])[0]
        assert run.data.params["train.optimizer"] == name


def test_train_records_one_mlflow_run(workdir, capsys):
    code, out, _ = run_cli(["train", *TINY, "peft=lora+adapter", "quant=nf4", "peft.lora.r=4"], capsys)
    assert code == 0
    assert "test exact match" in out and "MLflow run" in out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlflow.db")
    exp = client.get_experiment_by_name("ablate-train")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["arm"] == "lora+adapter"
    assert run.data.tags["components"] == "lora,adapter"
    assert run.data.tags["quant"] == "nf4"
    assert run.data.params["peft.lora.r"] == "4"
    assert run.data.params["train.steps"] == "6"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 7))
    assert len(client.get_metric_history(run.info.run_id, "grad_norm/adapter")) == 6
    assert len(client.get_metric_history(run.info.run_id, "val_em")) == 2  # eval_every=3 over 6 steps
    m = run.data.metrics
    for key in (
        "test_em",
        "test_loss",
        "trainable_params",
        "trainable_pct",
        "tokens_per_s",
        "peak_mem_mb",
        "wall_s",
    ):
        assert key in m, key
    # trainable params: LoRA r=4 on q,k,v,o of 2 layers (h=64, d_kv=32) + Houlsby adapters of width 16
    lora = 2 * 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64))
    adapter = 2 * 2 * (2 * 64 * 16 + 16 + 64)
    assert m["trainable_params"] == lora + adapter
    assert m["params/lora"] == lora
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "components"} <= artifacts


def test_train_is_deterministic_for_a_seed(workdir, capsys):
    args = ["train", *TINY, "peft=lora+prefix+prompt", "tracking=none", "train.seed=3"]
    outs = [run_cli(args, capsys)[1] for _ in range(2)]
    numbers = [[ln for ln in o.splitlines() if "loss" in ln or "exact" in ln] for o in outs]
    assert numbers[0] == numbers[1] and numbers[0]


def test_list_spelling_selects_the_same_arm(workdir, capsys):
    code, out, _ = run_cli(["train", *TINY, "peft=[adapter,lora]", "tracking=none"], capsys)
    assert code == 0 and "arm lora+adapter" in out


# Bad input (one line, exit 2, nothing written): the table in tests/test_bad_inputs.py.

_PROBE = """
import sys
from ablate.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
print("torch imported:", "torch" in sys.modules, "transformers imported:", "transformers" in sys.modules)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args,code",
    [
        (["train", "model=tiny", "train.steps=-5"], 2),
        (["train", "peft.lora.targets=bogus"], 2),
        (["study=lora_vs_adapter", "study.n_trials=0"], 2),
        (["study=lora_vs_adapter", "search.adapter.width.high=0"], 2),
        (["study=lora_vs_adapter", "--cfg", "job"], 0),
    ],
)
def test_a_refused_value_or_cfg_job_never_imports_torch(workdir, args, code):
    """The schema validates the whole config (a study's whole plan) before anything heavy loads."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=workdir)
    assert done.returncode == code, done.stderr
    assert "torch imported: False transformers imported: False" in done.stdout, done.stdout
    if code == 2:
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


def test_real_process_exit_code_and_cfg_job(workdir):
    """As a user runs it: a separate process, exit code 2, stderr one line; --cfg job composes."""
    bad = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "train", "peft=lora+bogus"],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert bad.returncode == 2
    known = f"known: {', '.join(COMPONENTS)}; presets: mam, unipelt"  # the registry's order
    assert bad.stderr.strip().splitlines()[-1] == f"error: peft='bogus': unknown component ({known})"
    shown = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "train", "peft=lora+prompt", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert shown.returncode == 0, shown.stderr
    import yaml

    assert set(yaml.safe_load(shown.stdout)["peft"]) == {"lora", "prompt"}
