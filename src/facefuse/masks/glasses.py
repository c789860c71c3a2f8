"""Glasses on a face: the frame's pixels, found by fitting a pair of lens rims to line evidence.

Why: the mesh copies everything inside the face region. A target's glasses vanished there while their
arms stayed outside, cut off at the region's edge; a source's glasses were pasted onto every target.

How: the eye band is aligned to the template face, so size and roll drop out. At two scales the
Hessian says, for every pixel, how strongly a thin line runs through it in a given direction. A family
of mirrored pairs of rounded-rectangle rims (centre, width, height, corner roundness) is scored by the
line evidence *along* each rim: a wrinkle or a crease that crosses a rim adds nothing, and a low
percentile along the rim means most of it must be there, which no eye, brow or wrinkle pattern gives.
A bridge across the nose must be there as well. Rimless and frameless glasses are not found; a face
is only searched when its eyes are far enough apart for a frame to be a few pixels wide.

The thresholds are conservative: on the 226 faces of ../shared/media (portraits, groups and every
frame of the video: wrinkled, bearded, side-lit, none wearing glasses) nothing is found; the best
rim score among them is 0.8 of the threshold, and no face passes both the rim and the bridge test.
A missed pair of glasses costs what it always did; a false one keeps a thin ring of the target's own
skin around the eyes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from facefuse.geometry import TEMPLATE_68, similarity

_SCALE = 128.0  # band pixels per template unit (the outer-eye-corner distance)
_X = (-1.0, 1.0)  # the band, in template units around the eye midpoint
_Y = (-0.55, 0.62)
_SIGMAS = (1.0, 2.0)  # band pixels: frames from about 0.015 to 0.06 eye distances thick
_SAMPLES = 48  # points along one rim
_RIM_PERCENTILE = 30  # 70% of a rim must show a line along it
_RIM_MIN = 0.6  # line strength along the rims, in units of the band's median curvature
_BRIDGE_MIN = 1.6
_MIN_EYE_DISTANCE = 40.0  # px: below this a frame is too thin to find reliably
_MIN_UNCLIPPED = 0.25  # of the eye band; a face blown out or crushed beyond that is not searched
_MIN_NORM = 0.5  # floor of the typical curvature (about 2 on a real face), so a flat band cannot divide by ~0
_RING = 0.035  # how far from a fitted rim frame pixels are looked for, in template units


@dataclass(frozen=True)
class Glasses:
    """A found pair of glasses, in template units: one lens's rim (the other is its mirror image)."""

    centre: tuple[float, float]  # of the lens on the image's right (x > 0)
    half_size: tuple[float, float]
    roundness: float  # superellipse exponent: 2 an ellipse, larger a squarer rim
    rim_score: float
    bridge_score: float
    dark: bool  # a dark frame (else a bright, e.g. metal, one)


def _superellipse(t: np.ndarray, half_width: float, half_height: float, roundness: float):
    """Points of a rounded rectangle (a superellipse) at angles `t`, centred on the origin."""
    c, s = np.cos(t), np.sin(t)
    return (
        np.sign(c) * np.abs(c) ** (2.0 / roundness) * half_width,
        np.sign(s) * np.abs(s) ** (2.0 / roundness) * half_height,
    )


@cache
def _rims() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate rim: its parameters (n, 5), its points (n, S, 2) and unit normals (n, S, 2),
    centred on the origin (the lens centre is in the parameters)."""
    t = np.linspace(0.0, 2.0 * np.pi, _SAMPLES, endpoint=False)
    params, points, normals = [], [], []
    grid = itertools.product(
        np.linspace(0.32, 0.46, 6),  # centre x
        np.linspace(-0.04, 0.16, 6),  # centre y
        np.linspace(0.22, 0.46, 7),  # half width: clears the eye (half width about 0.15)
        np.linspace(0.14, 0.32, 6),  # half height
        (2.0, 3.5),
    )
    for cx, cy, hw, hh, n in grid:
        if hh > 0.85 * hw or cx - hw < -0.02:  # lenses are wider than tall and do not cross the nose
            continue
        x, y = _superellipse(t, hw, hh, n)
        tangent = np.c_[np.roll(x, -1) - np.roll(x, 1), np.roll(y, -1) - np.roll(y, 1)]
        normal = np.c_[tangent[:, 1], -tangent[:, 0]]
        params.append((cx, cy, hw, hh, n))
        points.append(np.c_[x, y])
        normals.append(normal / (np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9))
    return np.array(params), np.array(points, np.float32), np.array(normals, np.float32)


def find_glasses(
    image: np.ndarray, points_68: np.ndarray, window: tuple[int, int, int, int] | None = None
) -> tuple[Glasses, np.ndarray] | None:
    """The glasses on the face with these 68 landmarks (in `image`'s coordinates) and a float32 mask
    (1 = frame) over `image`, or over its `window` (x0, y0, x1, y1) when given; None when none are
    found. The whole image is looked at either way: the frame's arms reach past a face's region."""
    if float(np.linalg.norm(points_68[45] - points_68[36])) < _MIN_EYE_DISTANCE:
        return None
    band, to_band = _eye_band(image, points_68)
    hessians = [_hessian(band, s) for s in _SIGMAS]
    # Line strength is measured against the band's own typical curvature, over pixels that are not
    # clipped: on a blown-out face the median was 0 and any faint line passed for a frame.
    unclipped = (band > 1) & (band < 254)
    if unclipped.mean() < _MIN_UNCLIPPED:
        return None
    curvature = np.abs(hessians[0][..., 0]) + np.abs(hessians[0][..., 1])
    norm = max(float(np.median(curvature[unclipped])), _MIN_NORM)
    # The bridge first: it is cheap, and on a face without glasses it usually rules them out.
    bridge = _bridge(hessians, norm)
    if bridge.max() < _BRIDGE_MIN:
        return None
    found = _best_rims(hessians, norm, bridge)
    if found is None:
        return None
    frame = _frame_mask(hessians, norm, found)
    x0, y0, x1, y1 = (0, 0, image.shape[1], image.shape[0]) if window is None else (int(v) for v in window)
    if x1 <= x0 or y1 <= y0:  # warpAffine would take an empty size to mean the band's own
        return found, np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.float32)
    to_band = to_band.copy()
    to_band[:, 2] += to_band[:, :2] @ (x0, y0)  # window -> band
    mask = cv2.warpAffine(frame, to_band, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return found, np.clip(mask, 0.0, 1.0)


def glasses_mask(
    image: np.ndarray, points_68: np.ndarray, window: tuple[int, int, int, int] | None = None
) -> np.ndarray | None:
    """A float32 mask (1 = a glasses frame) over `image` or its `window`, or None when the face wears
    none that can be found."""
    found = find_glasses(image, points_68, window)
    return None if found is None else found[1]


def _to_band(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ((x - _X[0]) * _SCALE).astype(np.float32), ((y - _Y[0]) * _SCALE).astype(np.float32)


def _eye_band(image: np.ndarray, points_68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grey eye band aligned to the template, and the image -> band affine."""
    to_band = similarity(points_68, (TEMPLATE_68 - (_X[0], _Y[0])) * _SCALE)
    size = (int((_X[1] - _X[0]) * _SCALE), int((_Y[1] - _Y[0]) * _SCALE))
    band = cv2.warpAffine(image, to_band, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    grey = cv2.cvtColor(band, cv2.COLOR_RGB2GRAY) if band.ndim == 3 else band
    return grey.astype(np.float32), to_band


def _hessian(grey: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w, 3): the xx, yy and xy second derivatives at `sigma`, scaled so lines of either scale
    compare; stacked, so one remap samples all three."""
    g = cv2.GaussianBlur(grey, (0, 0), sigma)
    k = sigma**1.5 / 4.0
    return np.dstack([cv2.Sobel(g, cv2.CV_32F, dx, dy, ksize=3) * k for dx, dy in ((2, 0), (0, 2), (1, 1))])


def _along(hessians, x: np.ndarray, y: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Signed line strength at points (x, y) for a line whose normal is (nx, ny): the curvature across
    it, less the curvature along it, positive for a dark line; the stronger of the two scales."""
    bx, by = _to_band(x, y)
    best = None
    for hessian in hessians:
        sampled = cv2.remap(hessian, bx, by, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a, b, c = sampled[..., 0], sampled[..., 1], sampled[..., 2]
        across = a * nx * nx + b * ny * ny + 2.0 * c * nx * ny
        along = a * ny * ny + b * nx * nx - 2.0 * c * nx * ny
        v = np.maximum(np.abs(across) - np.abs(along), 0.0) * np.sign(across)
        best = v if best is None else np.where(np.abs(v) > np.abs(best), v, best)
    return best


def _low_percentiles(v: np.ndarray) -> np.ndarray:
    """(2, rows): per row, the value that most of it reaches as a dark line, and as a bright one."""
    k = v.shape[1] * _RIM_PERCENTILE // 100
    part = np.partition(v, (k, v.shape[1] - 1 - k), axis=1)
    return np.stack([part[:, k], -part[:, v.shape[1] - 1 - k]])


def _best_rims(hessians, norm: float, bridge: np.ndarray) -> Glasses | None:
    """The best pair of rims of a polarity whose bridge (`bridge`: dark, bright scores) is there."""
    params, points, normals = _rims()
    scores = []
    for side in (-1.0, 1.0):  # the lens on the image's left is the mirror image of the right one
        x = side * (points[..., 0] + params[:, 0:1])
        y = points[..., 1] + params[:, 1:2]
        line = _along(hessians, x, y, side * normals[..., 0], normals[..., 1]) / norm
        scores.append(_low_percentiles(line))
    allowed = bridge >= _BRIDGE_MIN
    score = np.where(allowed[:, None], np.minimum(*scores), -np.inf)  # both lenses must be there
    polarity, i = np.unravel_index(int(score.argmax()), score.shape)
    if score[polarity, i] < _RIM_MIN:
        return None
    cx, cy, hw, hh, n = (float(v) for v in params[i])
    rim, dark = float(score[polarity, i]), bool(polarity == 0)
    return Glasses((cx, cy), (hw, hh), n, rim, float(bridge[polarity]), dark)


def _bridge(hessians, norm: float) -> np.ndarray:
    """(dark, bright): the strongest horizontal line across the nose between the eyes that most of
    the way across is there."""
    xs = np.linspace(-0.07, 0.07, 15, dtype=np.float32)
    ys = np.arange(-0.3, 0.12, 1.0 / _SCALE, dtype=np.float32)
    x, y = np.broadcast_arrays(xs[None, :], ys[:, None])
    v = _along(hessians, x, y, np.zeros_like(x), np.ones_like(x)) / norm
    return _low_percentiles(v).max(axis=1)


def _frame_mask(hessians, norm: float, glasses: Glasses) -> np.ndarray:
    """In band pixels: line pixels of the found polarity near the rims, across the bridge and along
    the arms, grown to the frame's width and softened by a pixel. The band and the candidate rims are
    fixed in template units, so every box below lies inside the band."""
    line = None
    for hessian in hessians:
        xx, yy, xy = hessian[..., 0], hessian[..., 1], hessian[..., 2]
        # The Hessian's eigenvalues: the larger is a dark line's strength, minus the smaller a bright one's.
        half_trace, root = 0.5 * (xx + yy), np.sqrt(0.25 * (xx - yy) ** 2 + xy * xy)
        strength = (half_trace + root) if glasses.dark else (root - half_trace)
        line = strength if line is None else np.maximum(line, strength)
    strong = line / norm > 0.5 * glasses.rim_score

    h, w = line.shape
    near = np.zeros((h, w), np.uint8)
    (cx, cy), (hw, hh) = glasses.centre, glasses.half_size
    t = np.linspace(0.0, 2.0 * np.pi, 4 * _SAMPLES, endpoint=False)
    rx, ry = _superellipse(t, hw, hh, glasses.roundness)
    ry = ry + cy
    ring = max(1, round(_RING * _SCALE))
    for side in (-1.0, 1.0):
        bx, by = _to_band(side * (rx + cx), ry)
        cv2.polylines(near, [np.round(np.c_[bx, by]).astype(np.int32)], True, 1, 2 * ring + 1)
        # The arm leaves the lens's outer side near its top and runs to the temple.
        ax, ay = _to_band(np.array([side * (cx + hw), side * 1.0]), np.array([cy - 0.4 * hh, cy - 0.4 * hh]))
        y0, y1 = int(ay[0] - 0.6 * hh * _SCALE), int(ay[0] + 0.3 * hh * _SCALE)
        xa, xb = sorted((int(ax[0]), int(ax[1])))
        near[y0:y1, xa:xb] = 1
    # The bridge: between the lenses, above their centres.
    bx, by = _to_band(np.array([-(cx - hw) - 0.02, cx - hw + 0.02]), np.array([cy - hh - 0.05, cy]))
    near[int(by[0]) : int(by[1]), int(bx[0]) : int(bx[1])] = 1

    frame = (strong & (near > 0)).astype(np.uint8)
    grow = max(1, round(_SIGMAS[-1]))
    frame = cv2.dilate(frame, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0)
