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

The target is searched the same way, but only in the strip between its brows and the top of the
swapped region: bangs or a fringe there stay in front of the new face. Below the brows the target is
not searched: a side-lit target's shadowed cheek reads as "far darker" and was kept, which cost
landmark error.
"""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.geometry import face_up
from facefuse.masks.region import disc, eyes, fill_polygon, reaching_edge

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
    return _hair(image, points_68, region, _upper_band(image.shape[:2], points_68))


def target_hair(
    image: np.ndarray,
    points_68: np.ndarray,
    region: np.ndarray,
    forehead: np.ndarray,
    skin: np.ndarray | None = None,
) -> np.ndarray | None:
    """A float32 mask (1 = hair) of the target's own hair across the `forehead` strip (a bool mask
    between the brows and the region's top), or None when none crosses it. `skin`: the face's
    `skin_lab`, when the caller already has it."""
    return _hair(image, points_68, region, forehead, skin)


def _hair(
    image: np.ndarray,
    points: np.ndarray,
    region: np.ndarray,
    band: np.ndarray,
    skin: np.ndarray | None = None,
) -> np.ndarray | None:
    iod = float(np.linalg.norm(points[45] - points[36]))
    if skin is None:
        skin = skin_lab(image, points)
    if skin is None:
        return None
    light = float(np.median(skin[:, 0]))
    chroma = np.median(skin[:, 1:], axis=0)
    spread = np.maximum(np.percentile(np.abs(skin[:, 1:] - chroma), 90, axis=0), 3.0)

    # Only the band's neighbourhood is looked at (per frame on a target, the band is a thin strip);
    # the margin leaves room for the mask's growth and blur below.
    grow = max(1, round(0.02 * iod))
    bx, by, bw, bh = cv2.boundingRect((band & (region > 0)).astype(np.uint8))
    if bw == 0 or bh == 0:
        return None
    h, w = image.shape[:2]
    pad = 4 * grow + 2
    x0, y0 = max(0, bx - pad), max(0, by - pad)
    x1, y1 = min(w, bx + bw + pad), min(h, by + bh + pad)
    win = (slice(y0, y1), slice(x0, x1))
    lab = cv2.cvtColor(np.ascontiguousarray(image[win]), cv2.COLOR_RGB2LAB).astype(np.float32)
    local = points - (x0, y0)
    sub_region = np.ascontiguousarray(region[win])

    far = np.linalg.norm((lab[..., 1:] - chroma) / spread, axis=2) > _CHROMA_SPREADS
    hair = (far | (lab[..., 0] < _DARK * light)) & (sub_region > 0) & band[win]
    hair &= held_out_features(lab.shape[:2], local, iod) == 0
    if not hair.any():
        return None

    hair = reaching_edge(hair, sub_region)
    if hair.sum() < _MIN_AREA * iod * iod:
        return None
    # A little wider and soft-edged, so the strand's anti-aliased fringe goes with it.
    mask = np.zeros((h, w), np.float32)
    mask[win] = cv2.GaussianBlur(cv2.dilate(hair.astype(np.float32), disc(grow)), (0, 0), grow)
    return mask


def skin_lab(image: np.ndarray, points_68: np.ndarray) -> np.ndarray | None:
    """Lab values of the cheek and nose-bridge patches, or None when they are too small to trust."""
    pts = points_68[np.concatenate(_SKIN_PATCHES)]
    h, w = image.shape[:2]
    x0, y0 = np.clip(np.floor(pts.min(0)).astype(int), 0, [w, h])
    x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int) + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    local = points_68 - (x0, y0)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for idx in _SKIN_PATCHES:
        mask |= fill_polygon(mask.shape, cv2.convexHull(local[idx].astype(np.float32)).reshape(-1, 2))
    lab = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    skin = lab[mask > 0]
    # A few thousand pixels fix a median as well as all of them; a close-up has tens of thousands.
    skin = skin[:: max(1, len(skin) // 4000)]
    return skin if len(skin) >= 20 else None


def _upper_band(shape: tuple[int, int], points_68: np.ndarray) -> np.ndarray:
    """Pixels above the nose bridge (landmark 28), along the face's own up direction."""
    up = face_up(points_68)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    x0, y0 = points_68[28]
    return (xs - x0) * up[0] + (ys - y0) * up[1] > 0


def held_out_features(shape: tuple[int, int], points_68: np.ndarray, iod: float) -> np.ndarray:
    """Eyes (with their surroundings) and brows: never hidden, whatever their colour."""
    mask = eyes(shape, points_68, _EYE_GUARD * iod)
    for brow in (slice(17, 22), slice(22, 27)):
        cv2.polylines(mask, [np.round(points_68[brow]).astype(np.int32)], False, 1, max(2, round(0.08 * iod)))
    return mask
