"""Pixel boost: run a model made for an s x s crop on an (n s) x (n s) crop, polyphase.

The big crop is split into n^2 interleaved sub-images, sub[a, b] = crop[a::n, b::n]. Each is an
ordinary s x s view of the whole face (shifted by a fraction of a pixel), so the model sees what it
was trained on; the outputs are interleaved back, giving n times the resolution with no upscaler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def explode(crop: np.ndarray, n: int) -> np.ndarray:
    """(n s, n s, C) -> (n^2, s, s, C), row-major over the phase (a, b)."""
    h, w = crop.shape[:2]
    if h != w or h % n:
        raise ValueError(f"pixel boost: a {w}x{h} crop does not split into {n}x{n} phases")
    s = h // n
    # (s, n, s, n, C): index [y, a, x, b] is crop[y n + a, x n + b].
    grid = crop.reshape(s, n, s, n, *crop.shape[2:])
    return np.ascontiguousarray(np.moveaxis(grid, (1, 3), (0, 1)).reshape(n * n, s, s, *crop.shape[2:]))


def implode(subs: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `explode`: (n^2, s, s, C) -> (n s, n s, C)."""
    s = subs.shape[1]
    grid = subs.reshape(n, n, s, s, *subs.shape[3:])
    return np.ascontiguousarray(np.moveaxis(grid, (0, 1), (1, 3)).reshape(n * s, n * s, *subs.shape[3:]))


def boosted(run: Callable[[np.ndarray], np.ndarray], crop: np.ndarray, model_size: int) -> np.ndarray:
    """Run `run` (one s x s crop -> one s x s crop) over every phase of `crop` and interleave the results."""
    n = crop.shape[0] // model_size
    if n == 1:
        return run(crop)
    return implode(np.stack([run(sub) for sub in explode(crop, n)]), n)
