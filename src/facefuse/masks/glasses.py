"""Glasses on a face: the frame's pixels, found by fitting a pair of lens rims to line evidence.

Why: the mesh copies everything inside the face region. A target's glasses vanished there while their
arms stayed outside, cut off at the region's edge; a source's glasses were pasted onto every target,
and so was the glare on a source's clear lenses (`lens_glare` finds it for the fill).

How: the eye band is aligned to the template face, so size and roll drop out. At two scales the
Hessian says, for every pixel, how strongly a thin line runs through it in a given direction; a step
(an eye's outline, one side of a wrinkle) also curves, like half a line, and is discounted by its
gradient, which a line's centre lacks. A family of mirrored pairs of rims (centre, width, height,
corner roundness, a wider top) is scored by the line evidence *along* each rim, each point free to
find its line a few pixels across, as real frames are not exact shapes: a crease that crosses a rim
adds nothing, and a low percentile along the rim means most of it must be there. Rims larger than the
eyes by a margin are tried, since a rim that hugs an eye finds the eye's own outline. A bridge across
the nose, at a height that joins the lenses, must be there too. Sunglasses' rims are the edges of dark
lenses: where the eyes' surroundings are dark they are searched without the step discount, and the
lenses found must be dark; they then stay with the frame. Rimless and half-rim frames are not found,
nor any on a face whose eyes are too close together for a frame to be a few pixels wide.
A source, searched once, is searched again with the band turned and shifted a little, since a
mirrored pair about landmarks a few pixels off fits the eyes' outlines rather than the frame.

Calibration on real faces: nothing is found on the 226 faces of ../shared/media (portraits, groups and
every frame of the video; wrinkled, bearded, side-lit, none wearing glasses) nor on 138 more from
public sample images, where the best rim score is 0.41 of the threshold (0.78 on four faces cut out
onto white); 7 of 9 real pairs of glasses there are found (all 4 clear ones, among them the demo's
Grace Hopper's translucent frames, and 3 of 5 sunglasses). A missed pair costs what it always did; a
false one keeps a thin ring of the target's own skin around the eyes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import cache

import cv2
import numpy as np

from facefuse.geometry import TEMPLATE_68, similarity
from facefuse.masks.hair import skin_lab
from facefuse.masks.region import disc, eyes

_SCALE = 128.0  # band pixels per template unit (the outer-eye-corner distance)
_X = (-1.0, 1.0)  # the band, in template units around the eye midpoint
_Y = (-0.55, 0.62)
_SIGMAS = (1.0, 2.0)  # band pixels: frames from about 0.015 to 0.06 eye distances thick
_SAMPLES = 48  # points along one rim
_RIM_PERCENTILE = 25  # 75% of a rim must show a line along it
_RIM_MIN = 0.4  # line strength along the rims, in units of the band's median curvature
_BRIDGE_MIN = 1.6
_BRIDGE_PERCENTILE = 30  # 70% of the way across: a wide lens's rim may cross the ends
_MIN_EYE_DISTANCE = 40.0  # px: below this a frame is too thin to find reliably
_MIN_UNCLIPPED = 0.25  # of the eye band; a face blown out or crushed beyond that is not searched
_MIN_NORM = 0.5  # floor of the typical curvature (about 2 on a real face), so a flat band cannot divide by ~0
_RING = 0.035  # how far from a fitted rim frame pixels are looked for, in template units
# Candidate lenses: centre x, centre y, half width, half height, roundness, taper. Real lenses are
# larger than the eye (half width about 0.15) by a margin; a rim that hugs the eye finds its outline.
_GRID = (
    np.linspace(0.30, 0.45, 6),
    np.linspace(-0.06, 0.18, 7),
    np.linspace(0.25, 0.41, 5),
    np.linspace(0.16, 0.28, 4),
    (2.0, 4.0),
    (0.0, 0.15),
)
# Real frames are not exact superellipses: each point of a rim may find its line up to 3 band pixels
# across, which the grid's steps (4-5 px) need as well.
_TOLERANCE = tuple(np.arange(-3, 4) / _SCALE)
_CLOSE = tuple(np.arange(-1, 2) / _SCALE)  # on the frame: within a pixel of it
_GRID_LOW = np.array([min(axis) for axis in _GRID[:4]])  # the range of the centres and sizes
_GRID_HIGH = np.array([max(axis) for axis in _GRID[:4]])
_REFINE = (0.03, 0.04, 0.04, 0.04)  # the grid's steps in centre x and y, half width and height
_KEEP = 0.6  # of the thresholds: the bar glasses seen a frame ago must clear to be kept
# The bridge joins the lenses: from a little above their tops to a little below their centres.
_BRIDGE_ROWS = (-0.04, 0.05)
# A step (one side of a wrinkle, an eye's outline, a cut-out's edge) curves like half a line: line
# strength less this times the gradient across it is left to real lines, whose centres have none.
_EDGE = 0.5
_SUNGLASSES_RIM_MIN = 1.3  # without that discount, which a dark lens's edge needs
_MAYBE_DARK_LENSES = 0.4  # where lenses usually sit, over the cheeks: below it sunglasses are looked for
_DARK_LENSES = 0.3  # the fitted lenses' grey over the cheeks': below it the lenses stay with the frame
# Glare on clear lenses: lighter than the skin by this fraction of the way from it to white, and with
# less than this fraction of its chroma (some colour floor: a grey or black-and-white face has none).
_GLARE_LIGHT = 0.35
_GLARE_CHROMA = 0.6
_GLARE_MIN_CHROMA = 8.0
_GLARE_EYE_GUARD = 0.06  # in eye distances
_GLARE_GROW = 0.02
# A source's landmarks can be a little off (rolled a degree or two, shifted a few pixels): the rims,
# searched as a mirrored pair about the landmarks' midline, then fitted the eyes' outlines instead
# of the frame, which was pasted onto every target. Sources (searched once) are looked at again
# with the band turned and shifted by these steps (degrees, template units), where a bridge is
# there at all; the best fit wins, and one found this way must clear a higher bar: over these
# alignments the faces without glasses reach at most 0.63 of it (0.94 of the usual bar).
_SETTLE_ROLLS = (-1.25, 0.0, 1.25)
_SETTLE_SHIFTS = (-0.03, -0.015, 0.0, 0.015, 0.03)
_SETTLED_RIM_MIN = 0.6


@dataclass(frozen=True)
class Glasses:
    """A found pair of glasses, in template units: one lens's rim (the other is its mirror image)."""

    centre: tuple[float, float]  # of the lens on the image's right (x > 0)
    half_size: tuple[float, float]
    roundness: float  # superellipse exponent: 2 an ellipse, larger a squarer rim
    taper: float  # how much wider the top is than the middle, as a fraction
    rim_score: float
    bridge_score: float
    dark: bool  # a dark frame (else a bright, e.g. metal, one)
    dark_lenses: bool = False  # sunglasses: the lenses are part of what stays in front
    edge: float = _EDGE  # the step discount its rims were scored with (0 for sunglasses' edges)
    # How the eye band was turned (degrees) and shifted (template units) against the landmarks'
    # alignment where the pair was found: see `settle` in find_glasses.
    band: tuple[float, float] = (0.0, 0.0)


# Where lenses usually sit: a first, cheap look at how dark the eyes' surroundings are.
_TYPICAL_LENSES = Glasses((0.38, 0.05), (0.27, 0.18), 3.0, 0.0, 0.0, 0.0, True)


def _superellipse(t: np.ndarray, half_width, half_height, roundness, taper=0.0):
    """Points of a rounded rectangle (a superellipse) at angles `t`, centred on the origin, `taper`
    times wider at the top than at the middle (and narrower at the bottom), as most frames are; the
    sizes may be arrays that broadcast against `t`."""
    c, s = np.cos(t), np.sin(t)
    y = np.sign(s) * np.abs(s) ** (2.0 / roundness) * half_height
    return np.sign(c) * np.abs(c) ** (2.0 / roundness) * half_width * (1.0 - taper * y / half_height), y


def _rim_set(params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rims with these parameters (centre x and y, half width and height, roundness, taper): the
    parameters (n, 6), their points (n, S, 2) and unit normals (n, S, 2), centred on the origin."""
    params = np.array(params, np.float64).reshape(-1, 6)
    t = np.linspace(0.0, 2.0 * np.pi, _SAMPLES, endpoint=False)[None, :]
    x, y = _superellipse(t, *(params[:, k : k + 1] for k in range(2, 6)))
    tx, ty = np.roll(x, -1, axis=1) - np.roll(x, 1, axis=1), np.roll(y, -1, axis=1) - np.roll(y, 1, axis=1)
    normals = np.stack([ty, -tx], axis=2)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True) + 1e-9
    return params, np.stack([x, y], axis=2).astype(np.float32), normals.astype(np.float32)


@cache
def _rims() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every admissible candidate rim on the grid (see _rim_set)."""
    grid = np.array(list(itertools.product(*_GRID)))
    return _rim_set(grid[_admissible(grid)])


def _admissible(params: np.ndarray) -> np.ndarray:
    """Which rims (rows of parameters) are lens-like: wider than tall, and clear of the nose."""
    cx, hw, hh, taper = params[:, 0], params[:, 2], params[:, 3], params[:, 5]
    return (hh <= 0.85 * hw) & (cx - hw * (1 + taper) >= -0.02)


def find_glasses(
    image: np.ndarray,
    points_68: np.ndarray,
    window: tuple[int, int, int, int] | None = None,
    previous: Glasses | None = None,
    settle: bool = False,
) -> tuple[Glasses, np.ndarray] | None:
    """The glasses on the face with these 68 landmarks (in `image`'s coordinates) and a float32 mask
    (1 = frame) over `image`, or over its `window` (x0, y0, x1, y1) when given; None when none are
    found. The whole image is looked at either way: the frame's arms reach past a face's region.

    `previous`: the glasses this face wore when last seen (a video's track). They are looked for first,
    near where they were and against a lower bar, so a pair near the threshold does not come and go
    from frame to frame; only when they are not there is the face searched afresh.

    `settle`: also search with the eye band turned and shifted a little (see _SETTLE_ROLLS), for
    landmarks that may be a few pixels off. Up to fifteen searches instead of one, and only where a
    bridge is there: meant for a source, searched once."""
    if float(np.linalg.norm(points_68[45] - points_68[36])) < _MIN_EYE_DISTANCE:
        return None
    looked = _look(image, points_68, (0.0, 0.0))
    if looked is None:
        return None
    found = None
    if previous is not None:
        seen = looked if previous.band == (0.0, 0.0) else _look(image, points_68, previous.band)
        if seen is not None:
            found = _confirmed(seen, _follow(seen.hessians, seen.norm, previous))
    # Clear lenses: a frame is a line, and the bridge, cheap to test, rules most faces out first.
    if found is None:
        found = _confirmed(looked, _search(looked.hessians, looked.norm, _EDGE, _RIM_MIN))
    if settle:
        found = _settled(image, points_68, looked, found)
    # Sunglasses: the rim is the edge of a dark lens, which the line test discounts on purpose (a
    # wrinkle's or an eye's edge looks like half a line). Searched without that discount, and only
    # where the eyes' surroundings are dark, the lenses found must be dark as well.
    if found is None and _lens_darkness(looked.grey, _TYPICAL_LENSES, None) < _MAYBE_DARK_LENSES:
        found = _confirmed(looked, _search(looked.hessians, looked.norm, 0.0, _SUNGLASSES_RIM_MIN))
    if found is None:
        return None
    found, lines = found
    frame = _frame_mask(lines, found)
    to_band = _band_affine(points_68, found.band)
    return found, np.clip(_from_band(frame, to_band, image.shape, window), 0.0, 1.0)


@dataclass(frozen=True)
class _Look:
    """The eye band seen at one alignment: its grey, its Hessians and its typical curvature."""

    band: tuple[float, float]
    grey: np.ndarray
    hessians: list[np.ndarray]
    norm: float


def _look(image: np.ndarray, points_68: np.ndarray, band: tuple[float, float]) -> _Look | None:
    """The eye band at this alignment, or None where too much of it is clipped to search."""
    grey = _eye_band(image, points_68, band)
    hessians = [_hessian(grey, s) for s in _SIGMAS]
    # Line strength is measured against the band's own typical curvature, over pixels that are not
    # clipped: on a blown-out face the median was 0 and any faint line passed for a frame.
    unclipped = (grey > 1) & (grey < 254)
    if unclipped.mean() < _MIN_UNCLIPPED:
        return None
    curvature = np.abs(hessians[0][..., 0]) + np.abs(hessians[0][..., 1])
    norm = max(float(np.median(curvature[unclipped])), _MIN_NORM)
    return _Look(band, grey, hessians, norm)


def _settled(
    image: np.ndarray, points_68: np.ndarray, looked: _Look, found: tuple[Glasses, np.ndarray] | None
) -> tuple[Glasses, np.ndarray] | None:
    """The best of `found` (searched at the landmarks' alignment, `looked`) and the clear pairs found
    with the band turned and shifted by the settling steps; those only where a bridge is there."""
    if _bridge(looked.hessians, looked.norm, _EDGE)[1].max() < _BRIDGE_MIN:
        return found
    for band in itertools.product(_SETTLE_ROLLS, _SETTLE_SHIFTS):
        turned = None if band == looked.band else _look(image, points_68, band)
        if turned is None:
            continue
        other = _confirmed(turned, _search(turned.hessians, turned.norm, _EDGE, _SETTLED_RIM_MIN))
        if other is not None and (found is None or other[0].rim_score > found[0].rim_score):
            found = other
    return found


def lens_glare(
    image: np.ndarray,
    points_68: np.ndarray,
    glasses: Glasses,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A uint8 mask (1 = glare) over `image`, or its `window`, of the reflections on clear lenses.

    A clear lens's frame is filled in from the skin around it, but a reflection of the room or a lamp
    on the glass stayed: a white patch pasted onto every target (the demo's Grace Hopper has two: under
    one eye, and along the top of the other lens). Glare is far lighter than the face's own skin and nearly
    colourless; skin in highlight keeps its colour. The eyes are held out, whites and catchlights and
    all: they are the source's own.
    """
    x0, y0, x1, y1 = _window(image.shape, window)
    empty = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    skin = skin_lab(image, points_68)
    if skin is None or glasses.dark_lenses or empty.size == 0:
        return empty
    to_band = _band_affine(points_68, glasses.band)
    lenses = np.zeros(_band_shape(), np.float32)
    cv2.fillPoly(lenses, _lens_polygons(glasses), 1.0)
    inside = _from_band(lenses, to_band, image.shape, window) > 0.5
    # A window reaching past the image sees black there: never glare.
    seen = np.zeros((*empty.shape, 3), np.uint8)
    h, w = image.shape[:2]
    ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if yb > ya and xb > xa:
        seen[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    lab = cv2.cvtColor(seen, cv2.COLOR_RGB2LAB).astype(np.float32)
    light, a, b = np.median(skin, axis=0)
    skin_chroma = max(float(np.hypot(a - 128.0, b - 128.0)), _GLARE_MIN_CHROMA)
    chroma = np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 128.0)
    glare = (
        inside
        & (lab[..., 0] > light + _GLARE_LIGHT * (255.0 - light))
        & (chroma < _GLARE_CHROMA * skin_chroma)
    )
    iod = float(np.linalg.norm(points_68[45] - points_68[36]))
    glare &= eyes(empty.shape, points_68 - (x0, y0), _GLARE_EYE_GUARD * iod) == 0
    # A reflection's soft edge is lighter than the lens too, and the fill must start outside it.
    return cv2.dilate(glare.astype(np.uint8), disc(max(1, round(_GLARE_GROW * iod))))


def _window(shape: tuple[int, ...], window: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (0, 0, shape[1], shape[0]) if window is None else (int(v) for v in window)
    return x0, y0, x1, y1


def _band_affine(points_68: np.ndarray, band: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The image -> eye band affine of the face with these landmarks, the band turned by `band`'s
    degrees about the eyes' midpoint and shifted by its template units."""
    to_band = similarity(points_68, (TEMPLATE_68 - (_X[0], _Y[0])) * _SCALE)
    roll, shift = band
    if roll == 0.0 and shift == 0.0:
        return to_band
    turn = cv2.getRotationMatrix2D((-_X[0] * _SCALE, -_Y[0] * _SCALE), roll, 1.0)
    turn[0, 2] += shift * _SCALE
    return turn[:, :2] @ to_band + np.c_[turn[:, 2]] * [0.0, 0.0, 1.0]


def _band_shape() -> tuple[int, int]:
    return int((_Y[1] - _Y[0]) * _SCALE), int((_X[1] - _X[0]) * _SCALE)


def _from_band(
    mask: np.ndarray, to_band: np.ndarray, shape: tuple[int, ...], window: tuple[int, int, int, int] | None
) -> np.ndarray:
    """A float32 band-pixel mask carried to the image's pixels, or its window's."""
    x0, y0, x1, y1 = _window(shape, window)
    if x1 <= x0 or y1 <= y0:  # warpAffine would take an empty size to mean the band's own
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.float32)
    to_band = to_band.copy()
    to_band[:, 2] += to_band[:, :2] @ (x0, y0)  # window -> band
    return cv2.warpAffine(
        mask.astype(np.float32), to_band, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )


def _confirmed(look: _Look, found: Glasses | None) -> tuple[Glasses, np.ndarray] | None:
    """Found glasses with their frame's line pixels and whether their lenses are dark, or None where
    a pair found as sunglasses (from the edges of its lenses) turns out to have clear lenses."""
    if found is None:
        return None
    lines = _frame_lines(look.hessians, look.norm, found)
    found = replace(found, dark_lenses=_lens_darkness(look.grey, found, lines) < _DARK_LENSES, band=look.band)
    return None if found.edge == 0.0 and not found.dark_lenses else (found, lines)


def _search(hessians, norm: float, edge: float, rim_min: float) -> Glasses | None:
    """The best glasses whose rims reach `rim_min`, lines discounted by `edge` times the gradient."""
    bridge = _bridge(hessians, norm, edge)
    return _best_rims(hessians, norm, bridge, edge, rim_min) if bridge[1].max() >= _BRIDGE_MIN else None


def _to_band(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ((x - _X[0]) * _SCALE).astype(np.float32), ((y - _Y[0]) * _SCALE).astype(np.float32)


def _eye_band(image: np.ndarray, points_68: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """The grey eye band aligned to the template (turned and shifted by `band`)."""
    warped = cv2.warpAffine(
        image,
        _band_affine(points_68, band),
        _band_shape()[::-1],
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    grey = cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY) if warped.ndim == 3 else warped
    return grey.astype(np.float32)


def _hessian(grey: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w, 5): the xx, yy and xy second derivatives and the x and y first ones at `sigma`, scaled
    so lines of either scale compare, and so a step's gradient matches its curvature at their peaks
    (sigma^1.5 and sigma^0.5; 4 and 8 undo the Sobel kernels' gains); stacked, so one remap samples
    them all."""
    g = cv2.GaussianBlur(grey, (0, 0), sigma)
    second = [
        cv2.Sobel(g, cv2.CV_32F, dx, dy, ksize=3) * sigma**1.5 / 4.0 for dx, dy in ((2, 0), (0, 2), (1, 1))
    ]
    first = [cv2.Sobel(g, cv2.CV_32F, dx, dy, ksize=3) * sigma**0.5 / 8.0 for dx, dy in ((1, 0), (0, 1))]
    return np.dstack(second + first)


def _along(hessians, x: np.ndarray, y: np.ndarray, nx: np.ndarray, ny: np.ndarray, edge: float) -> np.ndarray:
    """Signed line strength at points (x, y) for a line whose unit normal is (nx, ny): the curvature
    across it, less the curvature along it, less `edge` times the gradient across it, positive for a
    dark line; the stronger of the two scales. With the normal at angle a, t the Hessian's trace and
    d its part along 2a, the two curvatures are (t + d) / 2 and (t - d) / 2, and the difference of
    their sizes is t clipped to between 0 and d."""
    bx, by = _to_band(x, y)
    cos2, sin2 = nx * nx - ny * ny, 2.0 * nx * ny
    best = None
    for hessian in hessians:
        sampled = cv2.remap(hessian, bx, by, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a, b, c = sampled[..., 0], sampled[..., 1], sampled[..., 2]
        t, d = a + b, (a - b) * cos2 + 2.0 * c * sin2
        v = np.minimum(np.maximum(t, np.minimum(d, 0.0)), np.maximum(d, 0.0))
        if edge:
            g = np.abs(sampled[..., 3] * nx + sampled[..., 4] * ny)
            v = np.sign(v) * np.maximum(np.abs(v) - edge * g, 0.0)
        best = v if best is None else np.where(np.abs(v) > np.abs(best), v, best)
    return best


def _low_percentile(v: np.ndarray, percentile: int = _RIM_PERCENTILE) -> np.ndarray:
    """Per row, the value that all but `percentile` per cent of it reaches."""
    k = v.shape[-1] * percentile // 100
    return np.partition(v, k, axis=-1)[..., k]


def _rim_scores(hessians, norm: float, side: float, rims, edge: float, tolerance=_TOLERANCE) -> np.ndarray:
    """(2, n): how much of each of the `rims` (see _rim_set) is there as a dark line and as a bright
    one, each point within `tolerance` across it, for the lens on the image's right (`side` 1) or
    its mirror image on the left (-1)."""
    params, points, normals = rims
    x = side * (points[..., 0] + params[:, 0:1])
    y = points[..., 1] + params[:, 1:2]
    nx, ny = side * normals[..., 0], normals[..., 1]
    dark = bright = None
    for d in tolerance:
        line = _along(hessians, x + d * nx, y + d * ny, nx, ny, edge) / norm
        dark = line if dark is None else np.maximum(dark, line)
        bright = -line if bright is None else np.maximum(bright, -line)
    return np.stack([_low_percentile(dark), _low_percentile(bright)])


def _both_lenses(hessians, norm: float, rims, edge: float, polarity: int, tolerance=_TOLERANCE) -> np.ndarray:
    """(n,): how much of the weaker lens of each pair of `rims` is there, as lines of `polarity`."""
    return np.minimum(
        *(_rim_scores(hessians, norm, side, rims, edge, tolerance)[polarity] for side in (1.0, -1.0))
    )


def _best_rims(
    hessians, norm: float, bridge: tuple[np.ndarray, np.ndarray], edge: float, rim_min: float
) -> Glasses | None:
    """The best pair of rims of a polarity with a bridge (`bridge`: rows, and their dark and bright
    scores) at a height that joins them."""
    everything = _rims()
    params = everything[0]
    bridges = _joining(bridge, params)
    score = np.where(bridges >= _BRIDGE_MIN, np.inf, -np.inf)
    # Both lenses must be there: the left one is only scored where the right one passed.
    for side in (1.0, -1.0):
        which = np.flatnonzero((score >= rim_min).any(axis=0))
        if which.size == 0:
            return None
        rims = tuple(a[which] for a in everything)
        score[:, which] = np.minimum(score[:, which], _rim_scores(hessians, norm, side, rims, edge))
    polarity, i = np.unravel_index(int(score.argmax()), score.shape)
    if score[polarity, i] < rim_min:
        return None
    cx, cy, hw, hh, n, taper = _refined(hessians, norm, edge, params[i], polarity)
    rim, dark = float(score[polarity, i]), bool(polarity == 0)
    return Glasses((cx, cy), (hw, hh), n, taper, rim, float(bridges[polarity, i]), dark, edge=edge)


def _joining(bridge: tuple[np.ndarray, np.ndarray], params: np.ndarray) -> np.ndarray:
    """(2, n): per polarity, the strongest bridge at a height that joins each pair of rims."""
    ys, rows = bridge
    lo, hi = params[:, 1] - params[:, 3] + _BRIDGE_ROWS[0], params[:, 1] + _BRIDGE_ROWS[1]
    joins = (ys[None, :] >= lo[:, None]) & (ys[None, :] <= hi[:, None])
    return np.where(joins[None], rows[:, None, :], -np.inf).max(axis=2)


def _around(best) -> np.ndarray:
    """Rims within half a grid step of `best`'s centre and size, its roundness and taper."""
    cx, cy, hw, hh, n, taper = (float(v) for v in best)
    steps = itertools.product(*(np.linspace(-0.5, 0.5, 3) * step for step in _REFINE))
    return np.array([(cx + a, cy + b, hw + c, hh + d, n, taper) for a, b, c, d in steps])


def _refined(hessians, norm: float, edge: float, best: np.ndarray, polarity: int) -> tuple[float, ...]:
    """The rim near the grid's best that lies on the frame: the grid's neighbours within its
    tolerance score alike, and a rim a few pixels off the frame puts the frame's mask on the eyelids."""
    near = _around(best)
    near = near[_admissible(near)]  # `best` itself always is
    score = _both_lenses(hessians, norm, _rim_set(near), edge, polarity, _CLOSE)
    return tuple(float(v) for v in near[int(score.argmax())])


def _follow(hessians, norm: float, previous: Glasses) -> Glasses | None:
    """`previous` glasses, looked for near where they were and against a lower bar, or None. Of the
    rims that clear it, the one lying closest on the frame is taken (as _refined does), so the pair
    does not wander from frame to frame; it stays within the grid's range."""
    polarity = 0 if previous.dark else 1
    near = _around((*previous.centre, *previous.half_size, previous.roundness, previous.taper))
    in_grid = np.all((near[:, :4] >= _GRID_LOW) & (near[:, :4] <= _GRID_HIGH), axis=1)
    near = near[in_grid & _admissible(near)]
    if len(near) == 0:
        return None
    rims = _rim_set(near)
    score = _both_lenses(hessians, norm, rims, previous.edge, polarity)
    on_it = _both_lenses(hessians, norm, rims, previous.edge, polarity, _CLOSE)
    bridges = _joining(_bridge(hessians, norm, previous.edge), near)[polarity]
    rim_min = _RIM_MIN if previous.edge else _SUNGLASSES_RIM_MIN
    kept = (bridges >= _KEEP * _BRIDGE_MIN) & (score >= _KEEP * rim_min)
    if not kept.any():
        return None
    i = int(np.where(kept, on_it, -np.inf).argmax())
    cx, cy, hw, hh, n, taper = (float(v) for v in near[i])
    return Glasses(
        (cx, cy), (hw, hh), n, taper, float(score[i]), float(bridges[i]), previous.dark, edge=previous.edge
    )


def _bridge(hessians, norm: float, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows across the nose between the eyes, and per row (2, rows) how strong a horizontal dark
    and bright line is there most of the way across."""
    xs = np.linspace(-0.07, 0.07, 15, dtype=np.float32)
    ys = np.arange(-0.3, 0.12, 1.0 / _SCALE, dtype=np.float32)
    x, y = np.broadcast_arrays(xs[None, :], ys[:, None])
    v = _along(hessians, x, y, np.zeros_like(x), np.ones_like(x), edge) / norm
    return ys, np.stack([_low_percentile(v, _BRIDGE_PERCENTILE), _low_percentile(-v, _BRIDGE_PERCENTILE)])


def _lens_polygons(glasses: Glasses, shrink: float = 1.0, samples: int = 2 * _SAMPLES) -> list[np.ndarray]:
    """Both lenses' rims as band-pixel polygons, `shrink` times their size about their centres."""
    (cx, cy), (hw, hh) = glasses.centre, glasses.half_size
    t = np.linspace(0.0, 2.0 * np.pi, samples, endpoint=False)
    rx, ry = _superellipse(t, shrink * hw, shrink * hh, glasses.roundness, glasses.taper)
    polygons = []
    for side in (-1.0, 1.0):
        bx, by = _to_band(side * (rx + cx), ry + cy)
        polygons.append(np.round(np.c_[bx, by]).astype(np.int32))
    return polygons


def _lens_darkness(band: np.ndarray, glasses: Glasses, lines: np.ndarray | None) -> float:
    """The lenses' median grey (inside the rims, clear of the frame's `lines`) over the cheeks' just
    below them: the eyes are a small part of a clear lens, while sunglasses are dark all over."""
    inside = np.zeros(band.shape, np.uint8)
    cv2.fillPoly(inside, _lens_polygons(glasses, 0.8), 1)
    if lines is not None:
        inside[cv2.dilate(lines, np.ones((7, 7), np.uint8)) > 0] = 0
    cheeks = np.zeros(band.shape, np.uint8)
    (cx, cy), (hw, hh) = glasses.centre, glasses.half_size
    for side in (-1.0, 1.0):
        bx, by = _to_band(
            np.array([side * (cx - 0.5 * hw), side * (cx + 0.5 * hw)]),
            np.array([cy + hh + 0.06, cy + hh + 0.2]),
        )
        xa, xb = sorted(int(v) for v in bx)
        cheeks[int(by[0]) : int(by[1]), xa:xb] = 1
    if not inside.any() or not cheeks.any():
        return 1.0
    return float(np.median(band[inside > 0])) / max(float(np.median(band[cheeks > 0])), 1.0)


def _frame_lines(hessians, norm: float, glasses: Glasses) -> np.ndarray:
    """In band pixels (uint8, 1 = frame): line pixels of the found polarity near the rims, across the
    bridge and along the arms. The band and the candidate rims are fixed in template units, so every
    box below lies inside the band."""
    line = None
    for hessian in hessians:
        xx, yy, xy = hessian[..., 0], hessian[..., 1], hessian[..., 2]
        # The Hessian's eigenvalues: the larger is a dark line's strength, minus the smaller a bright one's.
        half_trace, root = 0.5 * (xx + yy), np.sqrt(0.25 * (xx - yy) ** 2 + xy * xy)
        strength = (half_trace + root) if glasses.dark else (root - half_trace)
        # The whole gradient, not only the part across a rim as in scoring: a pixel has no rim here.
        strength = strength - glasses.edge * np.hypot(hessian[..., 3], hessian[..., 4])
        line = strength if line is None else np.maximum(line, strength)
    strong = line / norm > 0.5 * glasses.rim_score

    h, w = line.shape
    near = np.zeros((h, w), np.uint8)
    (cx, cy), (hw, hh) = glasses.centre, glasses.half_size
    ring = max(1, round(_RING * _SCALE))
    cv2.polylines(near, _lens_polygons(glasses, samples=4 * _SAMPLES), True, 1, 2 * ring + 1)
    for side in (-1.0, 1.0):
        # The arm leaves the lens's outer side near its top and runs to the temple.
        ax, ay = _to_band(np.array([side * (cx + hw), side * 1.0]), np.array([cy - 0.4 * hh, cy - 0.4 * hh]))
        y0, y1 = int(ay[0] - 0.6 * hh * _SCALE), int(ay[0] + 0.3 * hh * _SCALE)
        xa, xb = sorted((int(ax[0]), int(ax[1])))
        near[y0:y1, xa:xb] = 1
    # The bridge: between the lenses, above their centres.
    bx, by = _to_band(np.array([-(cx - hw) - 0.02, cx - hw + 0.02]), np.array([cy - hh - 0.05, cy]))
    near[int(by[0]) : int(by[1]), int(bx[0]) : int(bx[1])] = 1

    return (strong & (near > 0)).astype(np.uint8)


def _frame_mask(lines: np.ndarray, glasses: Glasses) -> np.ndarray:
    """The frame's `lines` (and sunglasses' lenses) grown to the frame's width, softened by a pixel."""
    frame = lines.copy()
    if glasses.dark_lenses:
        cv2.fillPoly(frame, _lens_polygons(glasses), 1)
    grow = max(1, round(_SIGMAS[-1]))
    frame = cv2.dilate(frame, disc(grow))
    return cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0)
