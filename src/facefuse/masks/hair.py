"""Hair that falls across the upper part of a source face, found from the face's own skin colour.

A mesh swap copies whatever covers the source face, so a strand of the source's hair over a temple
or brow would be pasted onto every target. Hair differs from skin in chroma (red, blond, grey hair)
or is far darker (black, brown hair), and it reaches the face from outside: so the mask is the set
of pixels, in the band from the nose bridge up, whose colour is far from the cheeks' skin colour and
that connect to the edge of the swapped region. Features inside the face (eyes, brows) never connect
to the edge through skin, and are held out besides, so a brow crossed by a strand keeps its own
pixels. The band stops at the nose bridge because below it a beard is part of the face, not hair to
hide; side lighting is why darkness alone must be deep (shadowed skin keeps its chroma, and a
shadow darker than this is rare on a source chosen for its quality).
"""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.geometry import LEFT_EYE, RIGHT_EYE, face_up
from facefuse.masks.region import fill_polygon

# Cheek patches under each eye and the nose bridge: skin on nearly every face, rarely under hair.
_SKIN_PATCHES = ([1, 2, 3, 31, 40, 41], [15, 14, 13, 35, 47, 46], [27, 42, 29, 39])
_CHROMA_SPREADS = 2.5  # how many of the skin's own chroma spreads (90th percentile) count as "not skin"
_DARK = 0.35  # lightness below this fraction of the skin's counts as hair whatever its chroma
# Eyes are held out with this margin (in eye distances): lashes and lids, and the outer corner, where
# hiding a strand's tip showed the target's own eye shape and cost identity with the judge.
_EYE_GUARD = 0.12
_MIN_AREA = 0.004  # hidden area below this fraction of the eye distance squared is noise, not hair


def source_hair(image: np.ndarray, points_68: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """A float32 mask (1 = hair) over `image`, inside the uint8 `region` the swap will copy from,
    or None when no hair crosses it."""
    h, w = image.shape[:2]
    iod = float(np.linalg.norm(points_68[45] - points_68[36]))
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)

    skin_mask = np.zeros((h, w), np.uint8)
    for idx in _SKIN_PATCHES:
        skin_mask |= fill_polygon((h, w), cv2.convexHull(points_68[idx].astype(np.float32)).reshape(-1, 2))
    skin = lab[skin_mask > 0]
    if len(skin) < 20:
        return None
    light = float(np.median(skin[:, 0]))
    chroma = np.median(skin[:, 1:], axis=0)
    spread = np.maximum(np.percentile(np.abs(skin[:, 1:] - chroma), 90, axis=0), 3.0)
    far = np.linalg.norm((lab[..., 1:] - chroma) / spread, axis=2) > _CHROMA_SPREADS
    hair = (far | (lab[..., 0] < _DARK * light)) & (region > 0) & _upper_band((h, w), points_68)
    hair &= _features((h, w), points_68, iod) == 0
    if not hair.any():
        return None

    rim = region - cv2.erode(region, np.ones((3, 3), np.uint8))
    _, labels = cv2.connectedComponents(hair.astype(np.uint8))
    touching = np.unique(labels[(rim > 0) & hair])
    hair = np.isin(labels, touching[touching > 0])
    if hair.sum() < _MIN_AREA * iod * iod:
        return None
    # A little wider and soft-edged, so the strand's anti-aliased fringe goes with it.
    grow = max(1, round(0.02 * iod))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    mask = cv2.dilate(hair.astype(np.float32), kernel)
    return cv2.GaussianBlur(mask, (0, 0), grow)


def _upper_band(shape: tuple[int, int], points_68: np.ndarray) -> np.ndarray:
    """Pixels above the nose bridge (landmark 28), along the face's own up direction."""
    up = face_up(points_68)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    x0, y0 = points_68[28]
    return (xs - x0) * up[0] + (ys - y0) * up[1] > 0


def _features(shape: tuple[int, int], points_68: np.ndarray, iod: float) -> np.ndarray:
    """Eyes (with their surroundings) and brows: never hidden, whatever their colour."""
    mask = np.zeros(shape, np.uint8)
    for eye in (LEFT_EYE, RIGHT_EYE):
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points_68[eye]).astype(np.int32)), 1)
    grow = max(1, round(_EYE_GUARD * iod))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    for brow in (slice(17, 22), slice(22, 27)):
        cv2.polylines(mask, [np.round(points_68[brow]).astype(np.int32)], False, 1, max(2, round(0.08 * iod)))
    return mask
