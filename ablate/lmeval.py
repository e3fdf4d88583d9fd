"""Score an export with lm-evaluation-harness (``pip install 'ablate[eval]'``, lm-eval 0.4.x).

    python -m ablate.lmeval task --export DIR --out TASKDIR [--split test]   # ablate's items as a task
    python -m ablate.lmeval --model ablate --model_args path=DIR --tasks NAME --include_path TASKDIR
    lm_eval --model hf --model_args pretrained=BASE,peft=DIR,dtype=float32 --tasks NAME --include_path TASKDIR

Why a runner instead of a plugin: lm-eval 0.4.13 reads no entry points. Its model registry
(``lm_eval/api/registry.py``: ``Registry``, ``register_model``, ``get_model``) holds the built-in
names that ``lm_eval/models/__init__.py`` registers as ``"module:Class"`` placeholders, plus
whatever the running process registered itself; ``lm_eval`` therefore cannot see a third-party
model type, and ``python -m ablate.lmeval`` registers ``ablate`` and then runs lm-eval's own CLI
(``lm_eval.__main__.cli_evaluate``) on the same arguments. From Python, ``register()`` then
``lm_eval.simple_evaluate(model="ablate", model_args="path=DIR", ...)``.

The ``ablate`` model type rebuilds the base ``ablate.json`` records (same dtype, same
quantisation, through ``ablate.models.load_base``), re-attaches the components with
``ablate.export.load`` and hands the model and tokenizer to lm-eval's ``HFLM``, so every export
(LoRA+X, X alone, gated LoRA, a 4-bit base) runs loglikelihood and generate_until tasks.

``task`` writes the export's data split, exactly as ablate encodes it, as a local lm-eval task
(a YAML over a JSONL file, no hub): ``output_type: loglikelihood``, whose ``acc`` (lm-eval's
``is_greedy``: the argmax at every continuation position is the continuation token) is ablate's
exact match (``ablate.metrics.evaluate``: teacher-forced argmax over response + eos) when the
scored tokens are ablate's. Each item carries ablate's token ids, and the ``ablate`` model
scores exactly those. lm-eval's text path (``--model hf``) tokenises context + target itself:
the ids of the whole sequence are ablate's, but ``TemplateLM._encode_pair``
(``lm_eval/api/model.py``) moves the context's trailing whitespace into the continuation, and
ablate's prompts end with the chat template's ``"\\n"`` (or ``prompt + "\\n"`` without one), so
``hf`` also scores that newline: its ``acc`` is exact match and "the newline is the argmax",
its loglikelihood ablate's plus log p(newline). ``task`` counts this for the export at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError
from ablate.export import EXPORT_FILE, FORMAT

MODEL_NAME = "ablate"  # --model ablate
#: ablate's own token ids of an item (the prompt with its template, the response with eos): an
#: item carrying them is scored on exactly these by the ``ablate`` model type
PROMPT_IDS, RESPONSE_IDS, TOKENIZER = "ablate_prompt_ids", "ablate_response_ids", "ablate_tokenizer"
SPLITS = ("test", "validation", "train")  # test: the split the verdict reads


def read_export(path: str | Path, key: str = "path") -> dict[str, Any]:
    """``ablate.json`` of an export directory; anything else is a one-line ``ConfigError`` on ``key``."""
    directory = Path(str(path)).expanduser()
    meta_path = directory / EXPORT_FILE
    if not meta_path.is_file():
        reason = "is not a directory" if not directory.is_dir() else f"has no {EXPORT_FILE}"
        raise ConfigError(
            key, str(path), f"{reason}: not an ablate export (ablate export study=NAME out=DIR)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(key, str(path), f"{EXPORT_FILE} cannot be read: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(key, str(path), f"{EXPORT_FILE} has format {found!r}, not {FORMAT!r}")
    return meta


def tokenizer_id(tokenizer: Any) -> str:
    """A digest of the token -> id map and the eos id: stored ids mean the same tokens only under it."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    text = json.dumps([vocab, tokenizer.eos_token_id, tokenizer.bos_token_id], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def text_path_continuation(tokenizer: Any, context: str, target: str) -> list[int]:
    """The continuation ids lm-eval's ``HFLM`` scores for ``(context, target)`` from the text alone
    (``--model hf``, default model_args), as lm-eval 0.4.13 computes them: ``TemplateLM._encode_pair``
    moves the context's trailing whitespace to the continuation, encodes context + continuation and
    the context, and scores the ids after the context's; ``HFLM.tok_encode`` adds the tokenizer's
    special tokens unless the text starts with the BOS text (its ``prefix_token_id``)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, target = context[:-n], context[-n:] + target
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=not text.startswith(tokenizer.decode(prefix))))

    return encode(context + target)[len(encode(context)) :]


@dataclass
class Task:
    """A written task: its YAML and JSONL, and how lm-eval's text path tokenises its items."""

    name: str
    yaml: Path
    data: Path
    split: str
    items: int
    dropped: int
    #: items on which lm-eval's text path scores exactly ablate's response tokens
    text_exact: int
    #: leading tokens the text path scores in front of ablate's response (decoded), with counts
    text_extra: dict[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"wrote lm-eval task {self.name}: {self.items} {self.split} items "
            f"({self.dropped} over data.max_length dropped, as ablate drops them) to {self.yaml}",
            "  acc on it is ablate's exact match with --model ablate (which scores ablate's own token ids);",
            f"  --model hf scores exactly ablate's tokens on {self.text_exact} of {self.items} items",
        ]
        lines += [
            f"  and on {n} items the leading {tok!r} too (TemplateLM._encode_pair moves the prompt's "
            "trailing whitespace into the continuation): acc there is exact match and that token's argmax"
            for tok, n in self.text_extra.items()
        ]
        other = self.items - self.text_exact - sum(self.text_extra.values())
        if other:
            lines.append(f"  on {other} items its tokens differ otherwise: use --model ablate")
        return "\n".join(lines + [f"  {c}" for c in self.commands])


def write_task(export: str | Path, out: str | Path, split: str = "test", name: str | None = None) -> Task:
    """Write ``export``'s ``split`` (the items ablate scored, in ablate's order) as an lm-eval task
    in ``out``: ``NAME.yaml`` over ``NAME.jsonl``. Items longer than ``data.max_length`` are left
    out, as ablate leaves them out; the rest keep ablate's position as ``index`` (``doc_id`` too)."""
    from transformers import AutoTokenizer

    from ablate.data import DataConfig, load_splits
    from ablate.data.tokenize import encode

    if split not in SPLITS:
        raise ConfigError("--split", split, f"choose from {', '.join(SPLITS)}")
    export = Path(str(export)).expanduser().resolve()
    meta = read_export(export, "--export")
    name = name or re.sub(r"\W+", "_", f"ablate_{meta['study']}_{split}").lower()
    if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise ConfigError("--name", name, "a task name is letters, digits and _ . - (lm-eval's --tasks)")
    out = Path(str(out)).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file, not a directory")
    tokenizer = AutoTokenizer.from_pretrained(export)
    data_cfg = DataConfig.from_dict(meta["config"]["data"])
    max_length = int(meta.get("max_length") or data_cfg.max_length)
    examples = load_splits(data_cfg)[split]
    encoded = encode(examples, tokenizer, max_length)  # ablate's items, in ablate's order
    # the examples encode() kept (it drops those over max_length and keeps the others' order)
    alone = [encode([ex], tokenizer, 2**31)[0] for ex in examples]
    kept = [(ex, enc) for ex, enc in zip(examples, alone, strict=True) if len(enc.input_ids) <= max_length]
    assert [enc for _, enc in kept] == list(encoded)
    digest = tokenizer_id(tokenizer)
    rows, extra, exact = [], {}, 0
    for index, (ex, enc) in enumerate(kept):
        n = enc.n_prompt
        prompt, response = enc.input_ids[:n], enc.input_ids[n:]
        context = _prompt_text(ex.prompt, tokenizer)
        target = ex.response + tokenizer.eos_token
        # what lm-eval's text path scores; the ``ablate`` model type scores ``response`` itself
        scored = text_path_continuation(tokenizer, context, target)
        whole = list(tokenizer(context + target, add_special_tokens=False)["input_ids"])
        if whole == enc.input_ids and scored == response:
            exact += 1
        elif whole == enc.input_ids and len(scored) > len(response) and scored[-len(response) :] == response:
            lead = tokenizer.decode(scored[: -len(response)])
            extra[lead] = extra.get(lead, 0) + 1
        rows.append(
            {
                "index": index,
                "context": context,
                "target": target,
                "prompt": ex.prompt,
                "response": ex.response,
                PROMPT_IDS: prompt,
                RESPONSE_IDS: response,
                TOKENIZER: digest,
            }
        )
    data_path, yaml_path = out / f"{name}.jsonl", out / f"{name}.yaml"
    commands = _commands(export, meta, name, out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_atomic(yaml_path, _task_yaml(name, data_path, export, meta, split, len(rows), commands))
    return Task(name, yaml_path, data_path, split, len(rows), encoded.dropped, exact, extra, commands)


def _prompt_text(prompt: str, tokenizer: Any) -> str:
    """The text whose ids (without added special tokens) are ``ablate.data.tokenize.prompt_ids``."""
    if getattr(tokenizer, "chat_template", None):
        conv = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    return (tokenizer.bos_token or "") + prompt + "\n"


def _commands(export: Path, meta: dict[str, Any], name: str, out: Path) -> list[str]:
    """The commands that score ``export`` on the task; ``hf`` only for LoRA alone on a full-precision
    base (lm-eval's model_args cannot spell ablate's 4-bit config), with the dtype and autocast that
    ablate would use on this machine (another machine may differ: GPUs load bf16)."""
    from ablate import device as devices
    from ablate.models import _dtype
    from ablate.schema import ModelConfig, QuantConfig

    cfg = meta["config"]
    quant = QuantConfig.from_dict(cfg["quant"])
    device = devices.pick()
    dtype = str(_dtype(ModelConfig.from_dict(cfg["model"]).dtype, device, quant)).removeprefix("torch.")
    bf16 = devices.autocast_for(device, cfg["train"]["precision"]) is not contextlib.nullcontext
    hf_args = f"dtype={dtype}" + (",mixed_precision_dtype=bfloat16,softmax_dtype=float32" if bf16 else "")
    where = f"--tasks {name} --include_path {out}"
    if meta.get("merged"):  # a plain transformers model: lm-eval's own hf model, nothing of ablate's
        return [f"lm_eval --model hf --model_args pretrained={export},{hf_args} {where}"]
    cmds = [f"python -m ablate.lmeval --model ablate --model_args path={export} {where}"]
    if (export / "adapter_config.json").exists() and not quant.enabled:
        base = meta["base"]["weights"]
        cmds.append(f"lm_eval --model hf --model_args pretrained={base},peft={export},{hf_args} {where}")
    return cmds


def _task_yaml(
    name: str, data: Path, export: Path, meta: dict[str, Any], split: str, n: int, commands: list[str]
) -> str:
    import yaml

    head = [
        f"# python -m ablate.lmeval task --export {export} --split {split}: {n} items of study "
        f"{meta.get('study')} as ablate scored them",
        "# acc = ablate's exact match (teacher-forced argmax over response + eos) with --model ablate:",
        *[f"#   {c}" for c in commands],
        "# The data file is named by its absolute path: move both files together and rewrite it, or write again.",
    ]
    body = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(data)}},
        "test_split": split,
        "output_type": "loglikelihood",
        "doc_to_text": "context",  # the prompt with the chat template applied, as ablate encodes it
        "doc_to_target": "target",  # the response and the eos token, the tokens ablate's loss is on
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "study": meta.get("study"), "split": split},
    }
    return "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- the model type

_MODEL_CLASS: type | None = None


def register() -> None:
    """Make ``--model ablate`` known to lm-eval in this process (idempotent).

    Registered as lm-eval's lazy ``"module:Class"`` placeholder, so lm-eval's HF stack is imported
    only when an ``ablate`` model is built. ``lm_eval.models`` is imported first: ``get_model``
    fills the built-in names (``hf``...) only while the registry is empty, so a registry holding
    just ``ablate`` would lose them."""
    import lm_eval.models  # noqa: F401 - registers the built-in model names
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=f"{__name__}:AblateLM")


def __getattr__(name: str) -> Any:
    if name == "AblateLM":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _model_class() -> type:
    """``AblateLM``, defined on first use: it subclasses lm-eval's ``HFLM``, which ablate's main
    job must never need to import."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    from lm_eval.models.huggingface import HFLM

    class AblateLM(HFLM):
        """lm-eval's HF model on ablate's base with an export's components attached.

        model_args: ``path=EXPORT_DIR`` and HFLM's own (``batch_size``, ``device``,
        ``max_length``...). The base is the one ``ablate.json`` records, loaded as the study
        loaded it; the forward passes run under the autocast the study evaluated with
        (``train.precision``), and log-probabilities are taken in fp32 as ablate's loss is."""

        def __init__(self, path: str, device: str | None = None, **kwargs: Any) -> None:
            from ablate import device as devices
            from ablate.export import load
            from ablate.models import load_base
            from ablate.schema import ModelConfig, QuantConfig

            meta = read_export(path)
            if meta.get("merged"):
                raise ConfigError(
                    "path", path, "holds a merged model: score it with --model hf --model_args pretrained=DIR"
                )
            cfg = meta["config"]
            dev = _device(device)
            base = load_base(ModelConfig.from_dict(cfg["model"]), QuantConfig.from_dict(cfg["quant"]), dev)
            self.stack = load(path, base)
            base.model.eval()
            autocast = devices.autocast_for(base.device, cfg["train"]["precision"])
            kwargs.setdefault(
                "mixed_precision_dtype", None if autocast is contextlib.nullcontext else "bfloat16"
            )
            kwargs.setdefault("softmax_dtype", "float32")
            for key in ("pretrained", "tokenizer", "peft", "delta"):
                if key in kwargs:
                    raise ConfigError(key, kwargs[key], "the export records its base: give path=DIR alone")
            self.export_meta = meta
            self._tokenizer_id = tokenizer_id(base.tokenizer)
            super().__init__(pretrained=base.model, tokenizer=base.tokenizer, backend="causal", **kwargs)
            virtual = sum(a.cfg.length for a in self.stack if a.cfg.uses_context)  # type: ignore[attr-defined]
            if virtual and not kwargs.get("max_length"):  # prefix/prompt positions take part of the context
                self._max_length = self.max_length - virtual

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            """Items that ``task`` wrote are scored on the token ids ablate scored (lm-eval's text
            path would add the prompt's trailing newline to the continuation); any other task's
            requests go through HFLM unchanged, so standard tasks score as ``--model hf`` does."""
            ours = [i for i, r in enumerate(requests) if isinstance(r.doc, dict) and PROMPT_IDS in r.doc]
            if not ours:
                return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
            out: list[Any] = [None] * len(requests)
            mine = set(ours)
            rest = [i for i in range(len(requests)) if i not in mine]
            if rest:
                got = super().loglikelihood([requests[i] for i in rest], disable_tqdm=disable_tqdm)
                for i, res in zip(rest, got, strict=True):
                    out[i] = res
            encoded = [_ablate_ids(requests[i], self._tokenizer_id) for i in ours]
            for i, res in zip(
                ours, self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm), strict=True
            ):
                out[i] = res
            return out

        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            """``generate()`` with a key/value cache, except with a soft prompt: ablate's prompt
            tuning prepends its virtual tokens on every forward and takes no ``position_ids``, so
            those exports decode greedily by full forward passes (what teacher forcing scores)."""
            if "prompt" not in self.stack.names:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            if generation_kwargs.get("do_sample") or float(generation_kwargs.get("temperature") or 0) > 0:
                raise ConfigError("gen_kwargs", "do_sample", "a prompt-tuned export decodes greedily only")
            return _greedy(self, context, generation_kwargs.get("attention_mask"), max_length, stop)

    AblateLM.__module__ = __name__
    _MODEL_CLASS = AblateLM
    return AblateLM


def _device(device: str | None) -> Any:
    """The torch device for ``device`` (lm-eval's ``--device``), else the one ablate would pick.
    lm-eval's CLI hands HFLM's default "cuda" on to a model type that was not told a device: without
    CUDA that means "not given", as it does for lm-eval's own ``hf`` on a GPU machine."""
    import torch

    from ablate import device as devices

    if device and device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"ablate.lmeval: device {device!r} but no CUDA here: evaluating on {devices.pick()}",
            file=sys.stderr,
        )
        device = None
    return torch.device(device) if device else devices.pick()


def _ablate_ids(request: Any, tokenizer: str) -> tuple[Any, list[int], list[int]]:
    """``(args, prompt ids, response ids)`` of an item ``task`` wrote, if its tokenizer is this base's."""
    doc = request.doc
    if doc.get(TOKENIZER) != tokenizer:
        raise ConfigError(
            "tasks",
            request.task_name,
            f"was written for another tokenizer ({doc.get(TOKENIZER)}, this base has {tokenizer}): "
            "write it from an export of this base",
        )
    return request.args, list(doc[PROMPT_IDS]), list(doc[RESPONSE_IDS])


def _greedy(lm: Any, context: Any, mask: Any, max_length: int, stop: Sequence[str]) -> Any:
    """Greedy decoding by full forward passes, row by row without the left padding (so every row
    sees the positions it would alone); returns ``context`` with the new tokens, right-padded."""
    import torch

    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    rows = []
    for r in range(context.shape[0]):
        ids = context[r : r + 1] if mask is None else context[r : r + 1, mask[r].bool()]
        new: list[int] = []
        while context.shape[1] + len(new) < max_length:
            with (
                torch.no_grad(),
                torch.autocast(
                    lm.device.type,
                    dtype=lm.mixed_precision_dtype,
                    enabled=lm.mixed_precision_dtype is not None,
                ),
            ):
                nxt = int(lm.model(ids).logits[0, -1].argmax())
            new.append(nxt)
            ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
            if nxt == eos or any(s and s in lm.tok_decode(new) for s in stop):
                break
        rows.append(new)
    width = max((len(n) for n in rows), default=0)
    tail = torch.full((context.shape[0], width), pad, dtype=context.dtype, device=context.device)
    for r, new in enumerate(rows):
        tail[r, : len(new)] = torch.tensor(new, dtype=context.dtype)
    return torch.cat([context, tail], dim=1)


# ----------------------------------------------------------------------------- command line


class _Arguments(argparse.ArgumentParser):
    """argparse whose refusals are ablate's: one line naming the argument, exit code 2."""

    given = ""

    def error(self, message: str):
        raise ConfigError("arguments", self.given, message)


def main(argv: list[str] | None = None) -> None:
    """``task ...`` writes a task; anything else is lm-eval's CLI with ``--model ablate`` known."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["task"]:
            parser = _Arguments(
                prog="python -m ablate.lmeval task",
                description="Write an export's data split, as ablate scored it, as a local lm-eval task.",
            )
            parser.given = " ".join(argv)
            parser.add_argument("--export", required=True, help="an `ablate export` directory")
            parser.add_argument("--out", required=True, help="the task directory (lm-eval's --include_path)")
            parser.add_argument("--split", default="test", help=f"{', '.join(SPLITS)} (default: test)")
            parser.add_argument("--name", default=None, help="task name (default: ablate_<study>_<split>)")
            args = parser.parse_args(argv[1:])
            print(write_task(args.export, args.out, args.split, args.name).summary())
            return
        try:
            from lm_eval.__main__ import cli_evaluate
        except ImportError:
            raise ConfigError("--model", MODEL_NAME, "needs lm-eval: pip install 'ablate[eval]'") from None
        register()
        sys.argv = ["lm-eval", *argv]
        cli_evaluate()
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
