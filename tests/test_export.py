"""``ablate export``: the winner of a finished tiny study, loaded without the study, gives ablate's outputs.

Every round trip compares against ablate's own model rebuilt here from the run's MLflow
``components`` artifact (not against anything the export wrote), on inputs the export
never saw; and checks first that the trained components really move the logits, so an
equality cannot pass by both sides being the bare base.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from ablate.components import stack as components
from tests.conftest import load_tiny
from tests.test_cli import override, run_cli
from tests.tiny_study import STUDY, finished_study

ROUND_TRIP = 1e-5  # same computation in fp32: only float noise is allowed
MERGED = 1e-4  # W + s*B@A summed once instead of per forward


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return finished_study(tmp_path_factory)


def replicates(study_dir: Path, arm: str) -> dict[str, dict]:
    st = optuna.load_study(study_name=f"{STUDY}/{arm}", storage=f"sqlite:///{study_dir}/studies/{STUDY}.db")
    return st.user_attrs["replicates"]


def best_config(study_dir: Path, arm: str) -> dict:
    st = optuna.load_study(study_name=f"{STUDY}/{arm}", storage=f"sqlite:///{study_dir}/studies/{STUDY}.db")
    return st.user_attrs["best_config"]


def inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(3, vocab, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0  # one right-padded row, as batches are
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits.float()


def reference(study_dir: Path, run_id: str, tmp: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ablate's model for ``run_id`` (its logged components on a fresh base) and the bare base's logits."""
    from mlflow import MlflowClient

    path = MlflowClient(f"sqlite:///{study_dir}/mlflow.db").download_artifacts(run_id, "components", str(tmp))
    base = load_tiny()
    batch = inputs(base.model.config.vocab_size)
    bare = logits(base.model, batch)
    stack = components.load(base.model, path)
    ref = logits(base.model, batch)
    stack.detach()
    assert (ref - bare).abs().max() > 1e-3  # the trained components move the outputs
    return ref, bare, batch


def export(study_dir, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(study_dir)
    return run_cli(["export", *override([f"study={STUDY}", "model=tiny"], *args)], capsys)


def test_default_export_is_the_baseline_as_a_standard_peft_adapter(study_dir, tmp_path, monkeypatch, capsys):
    from peft import PeftModel

    out = tmp_path / "winner"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = export(study_dir, monkeypatch, capsys, f"out={out}")
    assert code == 0, err
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # no library noise
    # tiny models score 0 EM everywhere: no arm beats the baseline, so the baseline is the winner;
    # its seed is the one with the lowest validation loss (the study's objective), never chosen on test
    reps = replicates(study_dir, "lora")
    seed = min(reps, key=lambda s: (reps[s]["val_loss"], int(s)))
    assert f"exported lora seed {seed} of study {STUDY}" in stdout
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    cfg = json.loads((out / "adapter_config.json").read_text())
    best = best_config(study_dir, "lora")["lora"]
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == (
        "LORA",
        best["r"],
        pytest.approx(best["alpha"]),
    )

    ref, _, batch = reference(study_dir, reps[seed]["mlflow_run_id"], tmp_path / "ref")
    base = load_tiny()
    model = PeftModel.from_pretrained(base.model, str(out))
    delta = float((logits(model, batch) - ref).abs().max())
    print(f"PEFT directory round trip: max |Δlogits| = {delta:.3g}")
    assert delta <= ROUND_TRIP
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained(base, DIR)" in card


def test_merge_writes_a_plain_transformers_model(study_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    code, stdout, err = export(
        study_dir, monkeypatch, capsys, "arm=lora", "seed=2", "merge=true", f"out={out}"
    )
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors"} <= names and "adapter_config.json" not in names
    ref, _, batch = reference(
        study_dir, replicates(study_dir, "lora")["2"]["mlflow_run_id"], tmp_path / "ref"
    )
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    delta = float((logits(merged, batch) - ref).abs().max())
    print(f"merged round trip: max |Δlogits| = {delta:.3g}")
    assert delta <= MERGED


def test_combination_reloads_with_ablate_load_and_its_card_says_so(study_dir, tmp_path, monkeypatch, capsys):
    import ablate

    out = tmp_path / "combo"
    code, stdout, err = export(study_dir, monkeypatch, capsys, "arm=lora+adapter", "seed=1", f"out={out}")
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"components.safetensors", "components.json", "ablate.json", "README.md"} <= names
    assert "adapter_config.json" not in names  # not a PEFT adapter: PEFT cannot hold this combination
    metrics = replicates(study_dir, "lora+adapter")["1"]
    ref, bare, batch = reference(study_dir, metrics["mlflow_run_id"], tmp_path / "ref")
    base = load_tiny()
    stack = ablate.load(out, base.model)
    assert stack.names == ("lora", "adapter")
    delta = float((logits(base.model, batch) - ref).abs().max())
    print(f"ablate.load round trip: max |Δlogits| = {delta:.3g}")
    assert delta <= ROUND_TRIP
    stack.detach()
    assert torch.equal(logits(base.model, batch), bare)  # detached: the bare base again

    card = (out / "README.md").read_text()
    row = next(r for r in _csv(study_dir / "reports" / STUDY / "summary.csv") if r["arm"] == "lora+adapter")
    assert f"# {STUDY}: lora+adapter, seed 1" in card
    assert "needs ablate to load" in card and "ablate.load(DIR, base)" in card
    assert f"| trainable parameters | {int(metrics['trainable_params']):,} (" in card
    em = f"{100 * float(row['em_mean']):.1f} [{100 * float(row['em_lo']):.1f}..{100 * float(row['em_hi']):.1f}]"
    assert f"| test EM, this arm over 2 seed(s) | {em} |" in card
    assert "| Δ test EM vs lora |" in card and "tiny random Llama" in card
    assert "| data | arithmetic (digits=[2, 2], ops=+-), " in card  # the options that made it arithmetic_easy
    meta = json.loads((out / "ablate.json").read_text())
    assert (
        meta["config"]["peft"]["adapter"]["width"]
        == best_config(study_dir, "lora+adapter")["adapter"]["width"]
    )

    # a base of another shape is refused by name, before any weight is touched
    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    meta["base"]["arch"]["hidden_size"] = 96
    (wrong / "ablate.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hidden_size=96"):
        ablate.load(wrong, base.model)
    assert not any(".ablate." in n for n, _ in base.model.named_parameters())


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["arm=prefix"], "arm='prefix': no such arm in study"),
        (["arm=lora", "seed=7"], "seed=7: arm lora has replicate seeds 1, 2"),
        (["arm=lora+adapter", "merge=true"], "merge=True: arm lora+adapter is not plain LoRA"),
        (
            ["study=lora_vs_prefix", f"study.storage=sqlite:///studies/{STUDY}.db"],
            "study='lora_vs_prefix': not in storage",
        ),
        (["study.storage=sqlite:///studies/missing.db"], "study.storage="),
        (["NO_OUT"], "out=None: where to write"),
        (["NONEMPTY"], "exists and is not empty (overwrite=true replaces it)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args, expect, study_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    if args == ["NONEMPTY"]:
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        args = []
    extra = [] if args == ["NO_OUT"] else [f"out={out}"]
    args = [a for a in args if a != "NO_OUT"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, stdout, err = export(study_dir, monkeypatch, capsys, *args, *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing half-written


def test_overwrite_replaces_a_non_empty_directory(study_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, err = export(
        study_dir, monkeypatch, capsys, "arm=lora", "seed=1", "overwrite=true", f"out={out}"
    )
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert "old.txt" not in names and "adapter_model.safetensors" in names
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # the staging directory was moved, not left


def test_the_winner_is_the_arm_that_beats_the_baseline(tmp_path):
    """On the synthetic study lora+adapter is clearly better after Holm; lora+prefix is not."""
    from ablate.export import choose
    from tests.report_fixtures import write_study

    rec = write_study(tmp_path)
    pick = choose(rec.name, rec.storage, None, None)
    assert pick.arm == "lora+adapter" and "winner" in pick.why_arm
    assert pick.row["delta_lo"] > 0 and pick.components == ["lora", "adapter"]
    assert choose(rec.name, rec.storage, "lora+prefix", 1).seed == "1"
