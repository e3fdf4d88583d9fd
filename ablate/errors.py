"""The one error type a user can cause.

Every mistake a user can make (a config value, a CLI argument, a data file, a
storage URL) raises ``ConfigError``. The CLI turns it into a single line on
stderr naming the key and the value, and exits with code 2. Anything else is
a bug and raises normally, with its traceback.

``redact`` lives here too, beside the error messages that must not leak secrets, so
that the report (which never imports torch) can use it without the config stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A user-caused error: ``key=value: reason``, printed as one line."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}={value!r}: {reason}")

    def one_line(self) -> str:
        return "error: " + " ".join(str(self).split())


def require(cond: bool, key: str, value: Any, reason: str) -> None:
    """Raise ``ConfigError(key, value, reason)`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(key, value, reason)


_URL_SECRET = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|credential)", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"((?:password|token|secret|key)=)[^&\s]+", re.IGNORECASE)


def redact(value: Any, key: str = "") -> Any:
    """Hide secrets: passwords inside URLs, and values of secret-looking keys."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            return "***"
        value = _URL_SECRET.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
        return _QUERY_SECRET.sub(r"\1***", value)
    return value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"peft": {"lora": {"r": 8}}}`` -> ``{"peft.lora.r": 8}`` (secrets redacted)."""
    out: dict[str, Any] = {}
    for key, value in redact(data).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
