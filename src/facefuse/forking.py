"""Forking worker processes that share the parent's loaded models."""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any


def start_forked(procs: Iterable[Any]) -> None:
    """Start forked processes with every existing object frozen out of the children's collector.

    Otherwise a child may collect the parent's leftover garbage, whose finalizers (an encoder's, say)
    reach for threads that exist only in the parent, and crash.
    """
    gc.collect()
    gc.freeze()
    try:
        for proc in procs:
            proc.start()
    finally:
        gc.unfreeze()
