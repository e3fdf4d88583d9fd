"""SIGINT and SIGTERM: stop gracefully once, at once the second time.

SLURM, Kubernetes and ``docker stop`` send SIGTERM, a user presses Ctrl-C (SIGINT). The
first signal raises ``Interrupted`` (a ``KeyboardInterrupt``) in the main thread, so the code
already written for Ctrl-C runs: the running trial is told FAIL with reason ``interrupted``
(its budget is given back on resume), its MLflow run ends KILLED, and the process exits with
128 + the signal number (130 or 143). Inside ``protected()`` (a storage write that should not
be cut in half) the signal waits until the block ends. A second signal exits at once, without
cleanup: the heartbeat or the per-host orphan check fails that trial later.

Light on purpose: imported by the CLI before torch.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The first SIGINT/SIGTERM: stop, record what was running as interrupted, exit 128+signum."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    received: list[int] = []  # signals seen since install()
    depth = 0  # nesting of protected() blocks
    pending: int | None = None  # a signal that arrived inside protected()
    #: raised by the handler and not yet handled: Python discards an exception raised inside a
    #: garbage-collector or weakref callback or a ``__del__`` (SQLAlchemy's ``_collection_gced``
    #: swallowed a SIGTERM this way mid-study), so ``check`` raises it again at a safe point
    undelivered: int | None = None


def exit_code(exc: BaseException) -> int:
    """128 + signal for ``Interrupted``, 130 for a plain KeyboardInterrupt."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def _handler(signum: int, frame: FrameType | None) -> None:
    _State.received.append(signum)
    name = signal.Signals(signum).name
    if len(_State.received) > 1:
        print(f"\n{name} again: exiting now (the trial left running is reaped later)", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)
    print(
        f"\n{name}: stopping after recording the running trial as interrupted "
        "(send it again to exit at once); the same command resumes",
        file=sys.stderr,
    )
    if _State.depth:
        _State.pending = signum
        return
    _State.undelivered = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise the first signal's ``Interrupted`` again if no handler has seen it (it was raised
    where Python discards exceptions). Called once per training step and before each trial."""
    if _State.undelivered is not None and not _State.depth:
        raise Interrupted(_State.undelivered)


def delivered() -> None:
    """The ``Interrupted`` reached the code that records the interrupted trial: no more re-raises."""
    _State.undelivered = None


@contextmanager
def installed() -> Iterator[None]:
    """Handle SIGINT and SIGTERM inside the block (main thread only); restore the old handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in HANDLED}
    _State.received, _State.depth, _State.pending, _State.undelivered = [], 0, None, None
    for s in HANDLED:
        signal.signal(s, _handler)
    hook = sys.unraisablehook

    def quiet(unraisable: Any) -> None:  # an Interrupted Python discarded: ``check`` raises it again
        if not isinstance(unraisable.exc_value, Interrupted):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def protected() -> Iterator[None]:
    """A short critical section (e.g. telling a trial's outcome): a first signal waits for its end."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise Interrupted(signum)
