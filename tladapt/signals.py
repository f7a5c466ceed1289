"""Graceful stop on Ctrl-C (SIGINT) and SIGTERM: finish the step, checkpoint, then stop.

While :func:`stop_signals` is active, the first SIGINT or SIGTERM only records a
request, which the trainer reads after every step (:func:`requested`); it then writes
a checkpoint and raises :class:`tladapt.errors.RunInterrupted`. A second signal
restores the default handlers and acts at once (``KeyboardInterrupt`` for SIGINT),
for a user who does not want to wait for the step to end. Outside the main thread
the handlers cannot be installed and signals keep their usual effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["stop_signals", "requested", "SIGNALS"]

#: The signals that ask a run to stop gracefully.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None
_depth = 0


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def _handle(signum, frame) -> None:
    global _requested
    if _requested is not None:  # a second signal: stop now
        for s in SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.raise_signal(signum) if signum != signal.SIGINT else signal.default_int_handler(signum, frame)
        return
    _requested = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Install the graceful-stop handlers for the enclosed block (re-entrant: nested blocks
    share the outermost one's handlers and request); the previous handlers come back
    and the request is cleared when the outermost block exits."""
    global _depth, _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS} if _depth == 0 else {}
    if _depth == 0:
        _requested = None
        for s in SIGNALS:
            signal.signal(s, _handle)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, handler in previous.items():
                signal.signal(s, handler)
            _requested = None
