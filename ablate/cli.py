"""Entry point: ``ablate [train|study|report|worker|export] key=value ...`` (Hydra overrides).

``ablate study=NAME`` alone runs a study; otherwise the default command is
``train``. ``peft=lora+adapter`` is rewritten to Hydra's list form
``peft=[lora,adapter]`` before Hydra sees it, and group options are checked
here so that a typo is a one-line error with exit code 2 instead of a Hydra
traceback. Heavy imports happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
COMMANDS = ("train", "study", "report", "worker", "export")
EXPORT_KEYS = ("arm", "seed", "out", "merge", "overwrite")  # `ablate export arm=X` means export.arm=X
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


def _components() -> list[str]:
    """The component options of conf/peft (its presets left out: they only select components)."""
    return [n for n in _options("peft") if _expand([n]) == (n,)]


def _parse_arm(names: list[str]) -> tuple[str, ...]:
    known = _options("peft")
    if not names:
        raise ConfigError("peft", "", "select at least one component, e.g. peft=lora+adapter")
    for name in names:
        if name not in known:
            raise ConfigError("peft", name, f"unknown component (known: {', '.join(_components())})")
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


def precompose(args: list[str]) -> None:
    """Compose once before Hydra does, so that Hydra's own refusals (an unknown key, an override
    it cannot parse) are one line naming the key and value with exit code 2, not Hydra's multi-line
    message with exit code 1. Flags (``--cfg``, ``-m`` sweeps) are left to Hydra."""
    if any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose("config", overrides=args)
    except Exception as exc:  # noqa: BLE001 - any composition failure comes from the arguments
        text = " ".join(f"{exc} {exc.__cause__ or ''}".split())

        # the argument the message names: its whole text, else the longest key it mentions
        def named(arg: str) -> tuple[bool, bool, bool, int]:
            key, _, value = arg.partition("=")
            return (arg not in text, key not in text, not value or value not in text, -len(key))

        for arg in sorted(args, key=named):
            m = _OVERRIDE.match(arg)
            key = m["key"] if m else arg.split("=", 1)[0]
            if not all(named(arg)[:3]):
                if not m:
                    raise ConfigError(key, arg.partition("=")[2], "cannot be parsed") from None
                unknown = "not in struct" in text or "Could not override" in text or "not found" in text
                reason = "unknown key (add a new one with +KEY=VALUE)" if unknown else "cannot be parsed"
                raise ConfigError(key, m["value"] if m else "", reason) from None
        raise ConfigError("arguments", " ".join(args), text[:200]) from None


def guarded(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """User mistakes inside a command: one line on stderr, exit code 2, no traceback."""

    def run(cfg: Any) -> Any:
        try:
            return task(cfg)
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            sys.exit(2)

    run.__name__ = task.__name__
    run.__doc__ = task.__doc__
    return run


def _task(command: str) -> Callable[[Any], Any]:
    from ablate import commands

    return {
        "train": commands.train_command,
        "study": commands.study_command,
        "worker": commands.study_command,  # a worker is a study process sharing storage with others
        "report": commands.report_command,
        "export": commands.export_command,
    }[command]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    else:
        command = "study" if any(a.split("=", 1)[0] == "study" for a in args) else "train"
    if command == "export":
        args = [f"export.{a}" if a.split("=", 1)[0] in EXPORT_KEYS else a for a in args]
    if command != "train" and not any(a.split("=", 1)[0].lstrip("+~") == "peft" for a in args):
        # A study's arms pick their components; every component's fixed fields must be composed.
        args = ["peft=[" + ",".join(_components()) + "]", *args]
    try:
        if command != "train" and not any(a.split("=", 1)[0] == "study" for a in args):
            raise ConfigError("study", None, f"ablate {command} needs a study, e.g. study=lora_vs_adapter")
        args = normalize_overrides(args)
        precompose(args)
        task = _task(command)
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)

    import hydra

    from ablate import signals

    sys.argv = ["ablate", *args]
    app = hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")(guarded(task))
    try:
        with signals.installed():  # SIGINT/SIGTERM: the running trial is recorded as interrupted
            app()
    except KeyboardInterrupt as exc:
        code = signals.exit_code(exc)
        print(f"interrupted (exit {code}): run the same command again to resume", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
