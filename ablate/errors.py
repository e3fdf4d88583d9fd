"""The one error type a user can cause.

Every mistake a user can make (a config value, a CLI argument, a data file, a
storage URL) raises ``ConfigError``. The CLI turns it into a single line on
stderr naming the key and the value, and exits with code 2. Anything else is
a bug and raises normally, with its traceback.
"""

from __future__ import annotations

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
