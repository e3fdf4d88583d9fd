"""``python -m ablate.lmeval``: lm-evaluation-harness scores an export of a finished tiny study on
the items ablate scored, and agrees with ablate item by item.

ablate's side is what the study recorded (the run's ``items/test.parquet``: per-item exact match
and response loss) and, for items the study never saw, ``ablate.metrics.evaluate`` on the same
token ids; lm-eval's side is its own ``log_samples``. The tiny models answer nothing right
(exact match 0 on every test item), so each task also gets, per item, a twin whose reference is
the model's own greedy answer: exact matches, so that ``acc`` agreeing is not 0 = 0 only.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'ablate[eval]')")

from ablate import lmeval  # noqa: E402
from ablate.cli import main as ablate_main  # noqa: E402
from tests.tiny_study import STUDY, finished_study  # noqa: E402

ARMS = ("lora+adapter", "lora")
#: per-item loglikelihood, lm-eval against ablate (1.4e-6 measured here); room for bf16 autocast
#: (the study's on a CPU with bf16) rounding lm-eval's differently padded batches otherwise
LL_TOL = 0.05


@pytest.fixture(autouse=True)
def _lm_eval_logging():
    """lm-eval's CLI gives its logger a handler on the stderr of the moment (here: one test's
    capture, closed after it); put the logger back as it was after each test."""
    import logging

    logger = logging.getLogger("lm_eval")
    state = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = state
    if "lm_eval.utils" in sys.modules:  # its next setup_logging() adds a handler again
        sys.modules["lm_eval.utils"]._LOGGING_CONFIGURED = False


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return finished_study(tmp_path_factory)


@pytest.fixture(scope="module")
def exports(study_dir, tmp_path_factory) -> dict[str, Path]:
    """Seed 1 of the combination (needs ablate to load) and of LoRA alone (a PEFT adapter too)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for arm in ARMS:
        out[arm] = root / arm.replace("+", "_")
        args = ["export", f"study={STUDY}", "model=tiny", f"arm={arm}", "seed=1", f"out={out[arm]}"]
        with contextlib.chdir(study_dir), contextlib.redirect_stdout(io.StringIO()):
            ablate_main(args)
    return out


def recorded(study_dir: Path, export: Path, tmp: Path) -> dict[str, list]:
    """The per-item test outcomes the study recorded for the exported run."""
    import pandas as pd
    from mlflow import MlflowClient

    run_id = json.loads((export / "ablate.json").read_text())["mlflow_run_id"]
    path = MlflowClient(f"sqlite:///{study_dir}/mlflow.db").download_artifacts(
        run_id, "items/test.parquet", str(tmp)
    )
    return pd.read_parquet(path).sort_values("index").to_dict("list")


class Ablate:
    """ablate's own model for an export (the recorded base, the components re-attached), scoring
    token ids as the study scored them (``evaluate``, the study's batch size and autocast)."""

    def __init__(self, export: Path) -> None:
        from ablate import device as devices
        from ablate.export import load
        from ablate.models import load_base
        from ablate.schema import ModelConfig, QuantConfig

        self.meta = json.loads((export / "ablate.json").read_text())
        cfg = self.meta["config"]
        self.base = load_base(
            ModelConfig.from_dict(cfg["model"]), QuantConfig.from_dict(cfg["quant"]), torch.device("cpu")
        )
        self.stack = load(export, self.base)
        self.autocast = devices.autocast_for(self.base.device, cfg["train"]["precision"])
        self.model = self.base.model

    def evaluate(self, rows: list[dict], bare: bool = False) -> dict[str, list]:
        """Per-item exact match and response loss (``bare``: with every component knocked out)."""
        from ablate.data.tokenize import IGNORE_INDEX, Encoded, make_batches
        from ablate.metrics import evaluate

        enc = [
            Encoded(
                r[lmeval.PROMPT_IDS] + r[lmeval.RESPONSE_IDS],
                [IGNORE_INDEX] * len(r[lmeval.PROMPT_IDS]) + r[lmeval.RESPONSE_IDS],
            )
            for r in rows
        ]
        size = self.meta["config"]["train"]["eval_batch_size"]
        batches = make_batches(enc, size, shuffle=False, seed=0, pad_id=self.base.tokenizer.pad_token_id)
        with self.stack.knocked_out(self.stack.names) if bare else contextlib.nullcontext():
            return evaluate(self.model, batches, self.base.device, self.autocast, per_item=True)["items"]

    @torch.no_grad()
    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        with self.autocast():
            logits = self.model(torch.tensor([ids])).logits[0, -1].float()
        return torch.log_softmax(logits, -1)

    def greedy(self, ids: list[int], limit: int = 8) -> list[int]:
        """The greedy answer: up to ``limit`` tokens, ending at the first eos if one comes."""
        new: list[int] = []
        while len(new) < limit and self.base.tokenizer.eos_token_id not in new:
            new.append(int(self.next_logprobs(ids + new).argmax()))
        return new


def with_greedy_twins(task: lmeval.Task, ablate: Ablate) -> list[dict]:
    """The task's rows plus, per row, a twin whose reference is the model's greedy answer (appended
    to the task's JSONL, indices continuing)."""
    tok = ablate.base.tokenizer
    rows = [json.loads(line) for line in task.data.read_text().splitlines()]
    twins = []
    for row in rows:
        answer = ablate.greedy(row[lmeval.PROMPT_IDS])
        if answer[-1] == tok.eos_token_id:
            target = tok.decode(answer[:-1]) + tok.eos_token
            ids = tok(row["context"] + target, add_special_tokens=False)["input_ids"]
            assert ids == row[lmeval.PROMPT_IDS] + answer  # the twin's text is its ids
            twins.append({**row, "target": target, "response": target, lmeval.RESPONSE_IDS: answer})
    rows += [{**t, "index": len(rows) + i} for i, t in enumerate(twins)]
    task.data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def score(
    task: lmeval.Task, model: str | object, model_args: str = ""
) -> tuple[list[int], list[float], float]:
    """lm-eval's per-item acc and loglikelihood (``log_samples``, by doc_id) and its mean acc."""
    from lm_eval.tasks import TaskManager

    lmeval.register()
    res = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task.name],
        task_manager=TaskManager(include_path=str(task.yaml.parent), include_defaults=False),
        log_samples=True,
        batch_size=4,
        device="cpu",
    )
    samples = sorted(res["samples"][task.name], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == [s["doc"]["index"] for s in samples]
    ll = [float(s["filtered_resps"][0][0]) for s in samples]
    return [int(s["acc"]) for s in samples], ll, res["results"][task.name]["acc,none"]


def test_lm_eval_acc_on_the_written_task_is_ablates_exact_match_item_by_item(study_dir, exports, tmp_path):
    """The combination (LoRA+adapter: ablate-only format) through ``--model ablate``."""
    export = exports["lora+adapter"]
    task = lmeval.write_task(export, tmp_path / "tasks")
    record = recorded(study_dir, export, tmp_path / "items")
    n = len(record["index"])
    assert (task.name, task.items, task.dropped) == (f"ablate_{STUDY}_test", n, 0)
    ablate = Ablate(export)
    rows = with_greedy_twins(task, ablate)
    mine = ablate.evaluate(rows)
    assert mine["correct"][:n] == record["correct"]  # ablate now = ablate in the study: same items
    acc, ll, mean = score(task, "ablate", f"path={export}")

    assert acc == mine["correct"]  # lm-eval's acc is ablate's exact match, item by item
    assert mean == pytest.approx(sum(mine["correct"]) / len(rows))
    assert 0 < mean < 1  # not vacuous: the twins are exact matches, the study's items are not
    assert sum(acc[:n]) / n == pytest.approx(ablate.meta["metrics"]["test_em"])  # the study's own mean
    n_resp = [len(r[lmeval.RESPONSE_IDS]) for r in rows]
    ablate_ll = [-loss * k for loss, k in zip(mine["loss"], n_resp, strict=True)]
    study_ll = [-loss * k for loss, k in zip(record["loss"], n_resp[:n], strict=True)]
    worst = max(abs(a - b) for a, b in zip(ll, ablate_ll, strict=True))
    worst_study = max(abs(a - b) for a, b in zip(ll[:n], study_ll, strict=True))
    zero = [-loss * k for loss, k in zip(ablate.evaluate(rows, bare=True)["loss"], n_resp, strict=True)]
    moved = min(abs(a - b) for a, b in zip(ll, zero, strict=True))
    print(
        f"\nlm-eval acc {mean:.4f} = ablate EM {sum(mine['correct']) / len(rows):.4f} on {len(rows)} items "
        f"({n} test items, EM {sum(record['correct']) / n:.4f} as recorded, + {len(rows) - n} greedy twins); "
        f"max |Δ loglikelihood| {worst:.3g} (vs the study's record {worst_study:.3g}); "
        f"the components move it by >= {moved:.3g}"
    )
    assert worst <= LL_TOL and worst_study <= LL_TOL
    assert moved > 10 * LL_TOL  # the components were on: the bare base scores the items otherwise


def test_a_lora_export_scores_with_lm_evals_own_hf_model_and_peft(exports, tmp_path):
    """LoRA alone: ``--model hf --model_args pretrained=BASE,peft=DIR`` on the local base that
    ``ablate.json`` records (no hub). lm-eval tokenises the text: the whole sequence is ablate's,
    but ``_encode_pair`` moves the prompt's trailing newline into the continuation, so per item
    its loglikelihood is ablate's plus log p(newline) and its acc is exact match and that the
    newline is the argmax."""
    from lm_eval.api.registry import get_model

    export = exports["lora"]
    task = lmeval.write_task(export, tmp_path / "tasks")
    assert (task.text_exact, task.text_extra) == (0, {"\n": task.items})
    hf_cmd = task.commands[-1]
    assert hf_cmd.startswith("lm_eval --model hf --model_args pretrained=") and f"peft={export}" in hf_cmd
    model_args = hf_cmd.split("--model_args ")[1].split(" ")[0]
    ablate = Ablate(export)
    rows = with_greedy_twins(task, ablate)
    mine = ablate.evaluate(rows)
    lm = get_model("hf").create_from_arg_string(model_args, {"batch_size": 4, "device": "cpu"})
    newline = ablate.base.tokenizer("\n", add_special_tokens=False)["input_ids"]
    for row in rows:  # lm-eval's own encoding of each item, against ablate's ids
        ctx, cont = lm._encode_pair(row["context"], row["target"])
        assert ctx + cont == row[lmeval.PROMPT_IDS] + row[lmeval.RESPONSE_IDS]
        assert cont == newline + row[lmeval.RESPONSE_IDS]
    acc, ll, mean = score(task, lm)

    expect_acc, expect_ll = [], []
    for row, correct, loss in zip(rows, mine["correct"], mine["loss"], strict=True):
        before = ablate.next_logprobs(row[lmeval.PROMPT_IDS][:-1])  # where lm-eval starts scoring
        expect_acc.append(int(correct and int(before.argmax()) == newline[0]))
        expect_ll.append(-loss * len(row[lmeval.RESPONSE_IDS]) + float(before[newline[0]]))
    worst = max(abs(a - b) for a, b in zip(ll, expect_ll, strict=True))
    print(
        f"\nlm-eval hf+peft acc {mean:.4f} on {len(rows)} items = ablate EM and newline-greedy "
        f"{sum(expect_acc) / len(rows):.4f} (ablate EM {sum(mine['correct']) / len(rows):.4f}); "
        f"max |Δ loglikelihood| {worst:.3g} against ablate's + log p(newline)"
    )
    assert acc == expect_acc
    assert worst <= LL_TOL


def fake_export(real: Path, arm: list[str], out: Path) -> Path:
    """An export of ``arm`` with random component weights: ``real``'s record and base, other components."""
    from ablate.components import build_configs, parse_arm
    from ablate.components import stack as components
    from tests.conftest import load_tiny

    shutil.copytree(real, out)
    base = load_tiny()
    torch.manual_seed(0)
    stack = components.attach(base.model, build_configs(parse_arm(arm), {}), 128)
    with torch.no_grad():
        for p in stack.model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    for name in ("components.json", "components.safetensors"):
        (out / name).unlink()
    components.save(stack, out)
    stack.detach()
    return out


@pytest.mark.parametrize("arm", [None, ["lora", "prefix"], ["lora", "prompt"]])
def test_generate_until_is_the_greedy_answer(arm, exports, tmp_path):
    """generate_until runs on ablate's model (a soft prompt decodes without a key/value cache):
    with ``until`` at eos, lm-eval's text is the decoded greedy answer of ablate's own model."""
    from lm_eval.api.instance import Instance

    export = (
        exports["lora+adapter"] if arm is None else fake_export(exports["lora+adapter"], arm, tmp_path / "x")
    )
    lmeval.register()
    lm = lm_eval.api.registry.get_model("ablate").create_from_arg_string(
        f"path={export}", {"device": "cpu", "batch_size": 4}
    )
    assert lm.stack.names == (("lora", "adapter") if arm is None else tuple(arm))
    virtual = sum(a.cfg.length for a in lm.stack if a.cfg.uses_context)  # prefix/prompt positions
    assert (virtual > 0) == (arm is not None)
    assert lm.max_length == lm.model.config.max_position_embeddings - virtual
    ablate = Ablate(export)
    tok = ablate.base.tokenizer
    prompts = ["What is 12 + 30?", "What is 99 - 7?", "Hi"]
    contexts = [lmeval._prompt_text(p, tok) for p in prompts]
    gen = {"until": [tok.eos_token], "max_gen_toks": 6, "do_sample": False}
    got = lm.generate_until(
        [Instance("generate_until", {}, (c, dict(gen)), i) for i, c in enumerate(contexts)], disable_tqdm=True
    )
    want = []
    for c in contexts:
        answer = ablate.greedy(tok(c, add_special_tokens=False)["input_ids"], limit=6)
        want.append(tok.decode([t for t in answer if t != tok.eos_token_id], skip_special_tokens=True))
    print(f"\n{arm or 'lora+adapter export'}: {got}")
    assert got == want


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        lmeval.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_the_runner_gives_lm_evals_cli_the_ablate_model(exports, tmp_path, capsys):
    """``python -m ablate.lmeval task ...`` then ``python -m ablate.lmeval --model ablate ...``:
    lm-eval's own CLI, its own table."""
    export, tasks = exports["lora+adapter"], tmp_path / "tasks"
    code, out, err = run_main(["task", "--export", str(export), "--out", str(tasks)], capsys)
    assert code == 0, err
    name = f"ablate_{STUDY}_test"
    assert f"wrote lm-eval task {name}: 16 test items" in out and "--model ablate" in out
    results = tmp_path / "results"
    args = ["--model", "ablate", "--model_args", f"path={export}", "--tasks", name]
    args += ["--include_path", str(tasks), "--device", "cpu", "--output_path", str(results)]
    code, out, err = run_main(args, capsys)
    assert code == 0, err[-2000:]
    assert f"|{name}|" in out.replace(" ", "") and "|acc|" in out.replace(" ", "")
    (written,) = results.rglob("results_*.json")
    em = json.loads((export / "ablate.json").read_text())["metrics"]["test_em"]
    assert json.loads(written.read_text())["results"][name]["acc,none"] == pytest.approx(em)  # the study's EM


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["task", "--export", "NOT_AN_EXPORT", "--out", "OUT"], "--export="),
        (["task", "--export", "EXPORT", "--out", "OUT", "--name", "a b"], "--name='a b'"),
        (["--model", "ablate", "--model_args", "path=NOT_AN_EXPORT", "--tasks", "TASK"], "path="),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, expect, exports, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    lmeval.write_task(exports["lora+adapter"], tasks)
    (tmp_path / "nothing").mkdir()
    swap = {
        "NOT_AN_EXPORT": str(tmp_path / "nothing"),
        "EXPORT": str(exports["lora+adapter"]),
        "OUT": str(tmp_path / "out"),
        "TASK": f"ablate_{STUDY}_test",
        "path=NOT_AN_EXPORT": f"path={tmp_path / 'nothing'}",
    }
    argv = [swap.get(a, a) for a in argv] + (["--include_path", str(tasks)] if argv[0] != "task" else [])
    code, out, err = run_main(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expect in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert "not an ablate export" in lines[0] or "a task name" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_lm_eval_is_needed_only_here():
    """The main job never imports lm-eval: no module but ``ablate.lmeval`` imports it."""
    import re

    root = Path(lmeval.__file__).parent
    imports = re.compile(r"^\s*(import|from)\s+lm_eval\b", re.MULTILINE)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if imports.search(p.read_text("utf-8"))]
    assert offenders == ["lmeval.py"]
