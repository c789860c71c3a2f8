"""Ending a CLI run from outside: SIGTERM handled like Ctrl-C, for the duration of the run only."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block a kill from a supervisor (SIGTERM) raises KeyboardInterrupt, so a run ends
    as it does on Ctrl-C (finished work kept, outputs closed). The previous handler is back after
    it, so a program that calls cmd_* as a library keeps its own. Off the main thread, where Python
    cannot set handlers, the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
