"""Landmark-polygon masks and soft edges."""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.geometry import INNER_LIPS, LEFT_EYE, RIGHT_EYE


def fill_polygon(shape: tuple[int, int], polygon: np.ndarray, value: int = 1) -> np.ndarray:
    """A uint8 mask with `polygon` filled; sub-pixel vertices keep small faces accurate."""
    mask = np.zeros(shape, np.uint8)
    shift = 4
    pts = np.round(np.asarray(polygon, np.float64) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [pts], value, lineType=cv2.LINE_AA if value == 255 else cv2.LINE_8, shift=shift)
    return mask


def smooth_ramp(x: np.ndarray) -> np.ndarray:
    """Smoothstep on [0, 1]: a ramp whose slope is zero at both ends, so no edge shows where it starts."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def depth(binary: np.ndarray) -> np.ndarray:
    """Distance (px, float32) of each pixel of `binary` from its edge; 0 outside."""
    return cv2.distanceTransform((binary > 0).astype(np.uint8), cv2.DIST_L2, 5)


def ramp_in(inside: np.ndarray, width: float) -> np.ndarray:
    """From a `depth` map: 0 outside, rising smoothly to 1 at `width` px in (a hard edge for 0)."""
    if width <= 0:
        return (inside > 0).astype(np.float32)
    return smooth_ramp(inside / float(width)).astype(np.float32)


def feather(binary: np.ndarray, width: float) -> np.ndarray:
    """0 outside and on the edge of `binary`, rising smoothly to 1 at `width` px inside it."""
    return ramp_in(depth(binary), width)


def mouth_interior(shape: tuple[int, int], points_68: np.ndarray, grow: float) -> np.ndarray:
    """The inner-lip polygon (teeth, tongue, or nothing when closed), grown by `grow` px; uint8."""
    mask = fill_polygon(shape, points_68[INNER_LIPS])
    r = int(np.ceil(grow))
    if r > 0:
        mask = cv2.dilate(mask, disc(r))
    return mask


def eyes(shape: tuple[int, int], points_68: np.ndarray, grow: float) -> np.ndarray:
    """Both eyes' outlines filled and grown by `grow` px (at least one); uint8."""
    mask = np.zeros(shape, np.uint8)
    for eye in (LEFT_EYE, RIGHT_EYE):
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points_68[eye]).astype(np.int32)), 1)
    return cv2.dilate(mask, disc(max(1, round(grow))))


def disc(radius: int) -> np.ndarray:
    """A round structuring element reaching `radius` px from its centre."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def reaching_edge(candidates: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The connected parts of the bool mask `candidates` that touch the edge of the uint8 `region`:
    what comes into a face from outside it, as hair or a held object does."""
    rim = (region > 0) & (cv2.erode(region, np.ones((3, 3), np.uint8)) == 0)
    _, labels = cv2.connectedComponents(candidates.astype(np.uint8))
    touching = np.unique(labels[rim & candidates])
    return np.isin(labels, touching[touching > 0])
