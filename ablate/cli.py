"""Entry point: ``ablate [train|study|report|worker|export] key=value ...`` (Hydra overrides).

``ablate study=NAME`` alone runs a study; otherwise the default command is
``train``. ``peft=lora+adapter`` is rewritten to Hydra's list form
``peft=[lora,adapter]`` before Hydra sees it, and group options are checked
here so that a typo is a one-line error with exit code 2 instead of a Hydra
traceback. The config is composed once and turned into one typed ``commands.Job``
(``commands.prepare``: the schema's checks, a study's whole plan) before torch is imported: a
refused value costs about a second, and so does ``--help`` (``ablate/help.py``). The command
then runs from that ``Job``; only ``-m`` sweeps and ``--cfg`` go through ``hydra.main``.
"""

from __future__ import annotations

import difflib
import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ablate.commands import Job, prepare
from ablate.components import COMPONENTS
from ablate.errors import ConfigError, redact

CONF = Path(__file__).resolve().parent.parent / "conf"
COMMANDS = (
    "train",
    "study",
    "report",
    "worker",
    "export",
    "compare",
    "bundle",
)  # ablate.help.COMMANDS describes each
EXPORT_KEYS = (
    "arm",
    "seed",
    "task",
    "out",
    "merge",
    "overwrite",
    "weights",
)  # `ablate export arm=X` means export.arm=X
DEFAULT_ARM = ("lora", "adapter")
_OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[\w.@/-]+)=(?P<value>.*)$")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir())


def _split_choices(value: str) -> list[str]:
    """Top-level comma-separated sweep choices (``-m``), ignoring commas inside brackets."""
    out, depth, cur = [], 0, ""
    for ch in value:
        depth += ch in "[(" and 1 or (ch in "])" and -1) or 0
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _arm_list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        return [v.strip() for v in value[1:-1].split(",") if v.strip()]
    return [v.strip() for v in value.split("+") if v.strip()]


def _expand(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Components of an arm, presets (``mam``: a conf/peft file with a defaults list) expanded."""
    from ablate.study.config import load_preset

    out: list[str] = []
    for name in names:
        preset = load_preset(name)
        out += preset[0] if preset else [name]
    return tuple(out)


def _presets() -> list[str]:
    """The presets of conf/peft (``mam``: files that select components and fix their fields)."""
    return [n for n in _options("peft") if n not in COMPONENTS]


def _parse_arm(names: list[str]) -> tuple[str, ...]:
    known = _options("peft")
    if not names:
        raise ConfigError("peft", "", "select at least one component, e.g. peft=lora+adapter")
    for name in names:
        if name not in known:
            reason = f"unknown component (known: {', '.join(COMPONENTS)}; presets: {', '.join(_presets())})"
            raise ConfigError("peft", name, reason)
    if len(set(_expand(names))) != len(_expand(names)):
        raise ConfigError("peft", "+".join(names), "a component is listed twice")
    return tuple(names)


def normalize_overrides(args: list[str]) -> list[str]:
    """Rewrite ``peft=a+b`` to ``peft=[a,b]`` and check group options and component fields.

    Components are checked against ``conf/peft/`` (one file per component) rather than the
    registry, so that ``--help`` does not import torch.
    """
    groups = set(_groups())
    out: list[str] = []
    arms: list[tuple[str, ...]] = [DEFAULT_ARM]
    given: dict[str, str] = {}
    for arg in args:
        m = _OVERRIDE.match(arg)
        if m and not arg.startswith("-"):  # one key, one value: the last of two would win silently
            key = m["key"]
            if key in given:
                raise ConfigError(key, f"{given[key]} and {m['value']}", "given more than once: give it once")
            given[key] = m["value"]
    for arg in args:
        m = _OVERRIDE.match(arg)
        if not m or arg.startswith("-") or m["key"].startswith("hydra"):
            out.append(arg)
            continue
        key, value = m["key"], m["value"]
        if key == "peft":
            choices = _split_choices(value)
            arms = [_parse_arm(_arm_list(c)) for c in choices]
            lists = ["[" + ",".join(a) + "]" for a in arms]
            out.append(f"{m['prefix']}peft=" + ",".join(lists))
            continue
        if key in groups and m["prefix"] == "":
            for choice in _split_choices(value):
                if choice not in _options(key):
                    raise ConfigError(key, choice, f"unknown option (choose from {', '.join(_options(key))})")
        out.append(arg)
    for arg in out:
        m = _OVERRIDE.match(arg)
        if m and m["key"].startswith("peft."):
            parts = m["key"].split(".")
            comp = parts[1]
            missing = [a for a in arms if comp not in _expand(a)]
            if missing:
                arm = "+".join(missing[0])
                raise ConfigError(
                    m["key"],
                    m["value"],
                    f"component '{comp}' is not in the arm {arm} (select it with peft=...)",
                )
    return out


def precompose(args: list[str], with_hydra: bool = False) -> dict[str, Any] | None:
    """Compose the config with Hydra's compose API (the one composition of a plain run; with flags,
    ``--cfg`` or ``-m`` sweeps, ``hydra.main`` composes each job itself and this only checks), so
    that Hydra's own refusals (an unknown key, an override it cannot parse) are one line naming the
    key and value with exit code 2, not Hydra's multi-line message with exit code 1. Returns the
    config as plain values (``with_hydra``: plus Hydra's own node under ``hydra``, unresolved)."""
    if any(a.startswith("-") for a in args):
        return None
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=args, return_hydra_config=with_hydra)
            hydra_node = cfg.hydra if with_hydra else None
            if with_hydra:
                with open_dict(cfg):
                    del cfg["hydra"]
            out = OmegaConf.to_container(cfg, resolve=True)
            return {**out, "hydra": hydra_node} if with_hydra else out  # type: ignore[dict-item,return-value]
    except Exception as exc:  # noqa: BLE001 - any composition failure comes from the arguments
        text = " ".join(f"{exc} {exc.__cause__ or ''}".split())
        text = re.sub(r"See https?://\S+ for details", "", text)  # its "1.2" would match a value "2"

        # the argument the message names: its whole text, else its key, else the longest value it
        # quotes (a parse error quotes the input it stopped at), else the longest key
        def named(arg: str) -> tuple[bool, bool, bool, int, int]:
            key, _, value = arg.partition("=")
            quoted = bool(value) and value in text
            return (arg not in text, key not in text, not quoted, -len(value) if quoted else 0, -len(key))

        for arg in sorted(args, key=named):
            m = _OVERRIDE.match(arg)
            key = m["key"] if m else arg.split("=", 1)[0]
            if not all(named(arg)[:3]):
                quote = (
                    "cannot be parsed: a value with spaces, accents or other characters than letters, "
                    f"digits and _ . - + @ / needs quotes, e.g. {key}=\"'VALUE'\""
                )
                if not m:
                    raise ConfigError(key, arg.partition("=")[2], quote) from None
                unknown = "not in struct" in text or "Could not override" in text or "not found" in text
                reason = _unknown_key(key, args) if unknown else quote
                raise ConfigError(key, m["value"] if m else "", reason) from None
        raise ConfigError("arguments", " ".join(args), text[:200]) from None


def _unknown_key(key: str, args: list[str]) -> str:
    """``unknown key (did you mean train.steps?)``: the closest key of the config that the
    arguments' group selections compose."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    groups = {*_groups(), "peft", "study"}
    chosen = [a for a in args if (m := _OVERRIDE.match(a)) and m["key"] in groups]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = OmegaConf.to_container(compose("config", overrides=chosen))
    except Exception:  # noqa: BLE001 - no suggestion then
        cfg = {}
    known = list(_flat_keys(cfg))  # type: ignore[arg-type]
    parent = key.rpartition(".")[0]
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    if siblings:  # a misspelt field of a known group
        close = [
            f"{parent}.{c}" if parent else c
            for c in difflib.get_close_matches(key.rpartition(".")[2], siblings, 1)
        ]
    else:  # a misspelt group
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?; add a new one with +KEY=VALUE)"
    where = f"{parent} has" if parent else "known"
    return f"unknown key ({where}: {', '.join(siblings)}; add a new one with +KEY=VALUE)"


def _flat_keys(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for k, v in data.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat_keys(v, f"{prefix}{k}.")


MAX_SWEEP_CHECKS = 256  # a sweep larger than this is checked on its first jobs only


def _split_top(value: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (bare keys, quoted strings): ``{ops:'+',digits:[2,2]}``."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else json.dumps(value)  # true / false / numbers


def compose_tasks(command: str, args: list[str], composed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``study.tasks``: each task's whole config, composed as ``ablate ... data=<config>`` (plus the
    task's own data fields) would compose it, so the budget and every other override apply to each
    task alike. A task is a data config name, or ``{NAME: {field: value}}`` whose ``config`` (default:
    its ``name`` field, else NAME) picks the file of ``conf/data/`` its fields go on top of."""
    tasks = (composed.get("study") or {}).get("tasks") or []
    if command not in ("study", "worker") or not tasks:
        return {}
    known = _options("data")
    rest = [a for a in args if a.split("=", 1)[0].lstrip("+~") != "data"]  # data=X: each task picks its own
    out = {}
    for task in tasks:
        label, body = (task, {}) if isinstance(task, str) else next(iter(task.items()))
        body = dict(body or {})
        config = str(body.pop("config", body.get("name", label)))
        if config not in known:
            raise ConfigError(
                f"study.tasks.{label}", config, f"no such data config (one of {', '.join(known)})"
            )
        fields = [f"++data.{k}={hydra_value(v)}" for k, v in body.items()]
        plain = precompose([*rest, f"data={config}", *fields])
        if plain is None:  # flags (-m, --cfg): a task study is composed here or not at all
            raise ConfigError("study.tasks", tasks, "not with Hydra flags (-m sweeps, --cfg)")
        out[label] = plain
    return out


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The jobs of a ``-m`` sweep (plain comma lists; Hydra's range()/choice() sweeps are left to
    Hydra), so a bad value in job 3 is refused before job 1 trains and records."""
    import itertools

    if not ("-m" in args or "--multirun" in args):
        return []
    fixed = [a for a in args if not a.startswith("-")]
    axes = []
    for i, arg in enumerate(fixed):
        m = _OVERRIDE.match(arg)
        if m and "(" not in m["value"] and len(values := _split_top(m["value"])) > 1:
            axes.append([(i, f"{m['prefix']}{m['key']}={v}") for v in values])
    jobs = []
    for combo in itertools.islice(itertools.product(*axes), MAX_SWEEP_CHECKS):
        job = list(fixed)
        for i, arg in combo:
            job[i] = arg
        jobs.append(job)
    return jobs if axes else []


def print_help(command: str | None, args: list[str]) -> None:
    """``ablate [COMMAND] --help``: with the values the other arguments compose (as far as they do)."""
    from ablate.help import render

    if not any(a.split("=", 1)[0].lstrip("+~") == "peft" for a in args):
        args = ["peft=[" + ",".join(COMPONENTS) + "]", *args]  # every component's fields, as composed
    try:
        composed = precompose(normalize_overrides(args))
    except ConfigError:
        composed = None
    print(render(command, CONF, composed))


def hydra_task(command: str) -> Callable[[Any], Any]:
    """The task ``hydra.main`` runs (``-m`` sweeps, ``--cfg``): each job's config, composed by
    Hydra, becomes a ``Job`` once; user mistakes inside a command are one line on stderr, exit
    code 2, no traceback."""

    def task(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        overrides = list(HydraConfig.get().overrides.task)
        plain = OmegaConf.to_container(cfg, resolve=True)
        return run_job(lambda: prepare(command, plain, overrides))  # type: ignore[arg-type]

    return task


def run_job(job: Callable[[], Job] | Job) -> Any:
    from ablate import commands

    try:
        return commands.run(job() if callable(job) else job)
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)


def configure_logging(hydra_cfg: Any) -> None:
    """What ``hydra.main`` does before a job: its ``job_logging`` (here: INFO to stdout)."""
    from hydra.core.utils import configure_log

    configure_log(hydra_cfg.job_logging, hydra_cfg.verbose)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    explicit = bool(args) and args[0] in COMMANDS
    if args and not explicit and "=" not in args[0] and not args[0].startswith("-"):
        near = difflib.get_close_matches(args[0], COMMANDS, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        print(
            ConfigError(
                "command", args[0], f"unknown command (one of {', '.join(COMMANDS)}){hint}"
            ).one_line(),
            file=sys.stderr,
        )
        sys.exit(2)
    if explicit:
        command = args.pop(0)
    else:
        command = "study" if any(a.split("=", 1)[0] == "study" for a in args) else "train"
    if command == "compare":  # no study and no Hydra config: its own key=value arguments
        from ablate.commands import compare_command

        try:
            compare_command(args)
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            sys.exit(2)
        return
    if command == "report" and any(a.startswith("bundle=") for a in args):  # a bundle carries its study
        from ablate.bundle import rebuild

        opts = dict(a.split("=", 1) for a in args if "=" in a)
        try:
            extra = sorted(set(opts) - {"bundle", "out"})
            if extra:
                raise ConfigError(
                    extra[0], opts[extra[0]], "ablate report bundle=FILE takes only out=DIR beside it"
                )
            out = rebuild(opts["bundle"], Path(opts["out"]) if "out" in opts else None)
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            sys.exit(2)
        print(f"report: {out}/report.md (and report.html), rebuilt from {opts['bundle']}")
        return
    if command in ("export", "bundle"):
        args = [f"export.{a}" if a.split("=", 1)[0] in EXPORT_KEYS else a for a in args]
    if "--help" in args or "-h" in args:
        print_help(
            command if explicit or command == "study" else None,
            [a for a in args if a not in ("--help", "-h")],
        )
        return
    if command != "train" and not any(a.split("=", 1)[0].lstrip("+~") == "peft" for a in args):
        # A study's arms pick their components; every component's fixed fields must be composed.
        args = ["peft=[" + ",".join(COMPONENTS) + "]", *args]
    hydra_cfg = None
    try:
        if command != "train" and not any(a.split("=", 1)[0] == "study" for a in args):
            raise ConfigError("study", None, f"ablate {command} needs a study, e.g. study=lora_vs_adapter")
        args = normalize_overrides(args)
        composed = precompose(args, with_hydra=True)
        job = None
        if composed is not None:  # no flags: composed once here, run from it below
            hydra_cfg = composed.pop("hydra")
            job = prepare(command, composed, args, compose_tasks(command, args, composed))
        for sweep in sweep_jobs(args):  # -m: every job of the sweep is valid before the first runs
            prepare(command, precompose(sweep) or {}, sweep)
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)

    from ablate import signals

    try:
        if job is not None:
            configure_logging(hydra_cfg)
            with signals.installed():  # SIGINT/SIGTERM: the running trial is recorded as interrupted
                run_job(job)
            return
        import hydra

        sys.argv = ["ablate", *args]  # flags (-m sweeps, --cfg): Hydra composes and runs each job
        app = hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")(hydra_task(command))
        with signals.installed():
            if "--cfg" in args or "-c" in args:  # Hydra prints the config: hide URL passwords in it
                from contextlib import redirect_stdout

                buffer = io.StringIO()
                with redirect_stdout(buffer):
                    app()
                print(redact(buffer.getvalue()), end="")
                return
            app()
    except KeyboardInterrupt as exc:
        code = signals.exit_code(exc)
        print(f"interrupted (exit {code}): run the same command again to resume", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
