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
from urllib.parse import unquote_plus


class ConfigError(ValueError):
    """A user-caused error: ``key=value: reason``, printed as one line."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}={value!r}: {reason}")

    def one_line(self) -> str:
        """The line the CLI prints: whitespace folded, and any password in a URL hidden (the echo
        of a misspelt key or an unparsable value would otherwise print it)."""
        return "error: " + redact(" ".join(str(self).split()))


def require(cond: bool, key: str, value: Any, reason: str) -> None:
    """Raise ``ConfigError(key, value, reason)`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(key, value, reason)


_SECRET_KEY = re.compile(
    r"(password|passwd|pwd|secret|token|api_?key|credential|auth|signature)", re.IGNORECASE
)
# A URL inside any text: a scheme, "://", then everything up to whitespace or a quote.
_URL = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<rest>[^\s'\"<>]+)")


def _redact_url(scheme: str, rest: str) -> str:
    """``scheme://user:password@host/path?query`` with the password and secret query values hidden.

    Parsed by hand around ``urllib.parse``: ``urlsplit`` ends the authority at the first ``/``,
    so a password holding ``/`` (``postgres:ab/s3cr3t@host``) would come out as part of the path
    and be printed. The userinfo here ends at the *last* ``@`` before any query or fragment, so a
    password may hold ``/``, ``@``, ``:`` or percent-escapes and is still hidden whole.
    """
    head, sep, query = rest.partition("?")
    head, hash_, fragment = head.partition("#")
    if "@" in head:
        userinfo, host = head.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        head = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    if sep:  # each key decoded to match it, each value kept as written unless it is a secret
        parts = (p.partition("=") for p in query.split("&"))
        query = "&".join(
            f"{k}{eq}{'***' if eq and _SECRET_KEY.search(unquote_plus(k)) else v}" for k, eq, v in parts
        )
    return f"{scheme}{head}{hash_}{fragment}{sep}{query}"


def redact(value: Any, key: str = "") -> Any:
    """Hide secrets: passwords and secret query values inside URLs (anywhere in a text), and the
    values of secret-looking keys. The one redaction every printer and recorder uses."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            return "***"
        return _URL.sub(lambda m: _redact_url(m["scheme"], m["rest"]), value)
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
