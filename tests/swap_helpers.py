"""Helpers for tests of what the mesh swap hides or keeps (source hair, occluders)."""

from __future__ import annotations

import numpy as np

from facefuse.masks import fill_polygon
from facefuse.swap import MeshSettings, MeshSwapper
from facefuse.swap.mesh import mesh_points, region_outline


def swap_region(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The uint8 region the default mesh swap copies from a face with these 68 points."""
    return fill_polygon(image.shape[:2], region_outline(mesh_points(points, MeshSettings().forehead)))


def clean_pasted_hidden(target, tface, clean, painted, face, **hiding_off):
    """Three swaps onto `target`: of the `clean` source, and of the `painted` one with the thing
    drawn on it pasted (the settings in `hiding_off`) and hidden (the defaults)."""
    hiding, pasting = MeshSwapper(), MeshSwapper(MeshSettings(**hiding_off))
    return (
        pasting.swap(target, tface, pasting.prepare(clean, face)),
        pasting.swap(target, tface, pasting.prepare(painted, face)),
        hiding.swap(target, tface, hiding.prepare(painted, face)),
    )
