"""Things in front of a face that are not face, found by hue: a microphone held to the chin,
a blue screen or sky that the landmarks' jaw line takes in beside the cheek.

A mesh swap copies whatever covers the source face (a microphone at the source's chin was pasted
onto every target's) and paints over whatever covers the target's. The built-in stack has no
segmentation network to say what is face, but hue says some of it safely: skin and all that grows
on a face (beard, stubble, brows, hair of any shade, lips) have the skin's own warm hue or none at
all. A pixel whose hue lies on the far side of grey from the skin's (bluish where the skin is
orange-red) is none of those. Such pixels that reach the edge of the swapped region (an occluder
comes from outside the face) are not face: on a source the target shows through there, and on a
target they stay in front of the new face.

What this leaves alone, on purpose: dark pixels, whose hue is compression noise (a black beard in a
cool-graded photo reads faintly blue); faces whose skin is nearly grey (a black-and-white or
cold-graded photo), where no hue is the skin's opposite; faces lit by coloured light from one side
(a blue stage light makes the lit cheek's own skin bluish), found by one cheek being far cooler than
the face as a whole; and occluders with no hue of their own (a black microphone is as hueless as a
black beard) or with the skin's (a hand).
"""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.masks.hair import _SKIN_PATCHES, held_out_features, skin_lab
from facefuse.masks.region import disc, fill_polygon, reaching_edge

_MIN_WARMTH = 6.0  # the skin's chroma must be at least this far from grey (Lab units) to have an opposite
_OPPOSITE = 1.0  # how far past grey, away from the skin's hue, a pixel must lie (Lab units)
_DARK_FLOOR = 0.3  # pixels darker than this fraction of the skin's lightness are never judged by hue
_EVEN_LIGHT = 0.6  # each cheek's warmth must reach this fraction of the whole face's
_MIN_AREA = 0.004  # hidden area below this fraction of the eye distance squared is noise
_WORK_IOD = 64.0  # eye distance (px) the search works at
_COOL = 0.35  # next to what is found, less than this fraction of the skin's warmth is the object's too
_REACH = 0.15  # how far from what is found that spreads, in eye distances
_GROW = 0.04  # the mask's growth and softness, in eye distances


def occluders(
    image: np.ndarray, points_68: np.ndarray, region: np.ndarray, skin: np.ndarray | None = None
) -> np.ndarray | None:
    """A float32 mask (1 = not face) over `image`, inside the uint8 `region` the swap covers, or
    None when nothing of the skin's opposite hue reaches into it. `skin`: the face's `skin_lab`,
    when the caller already has it."""
    if skin is None:
        skin = skin_lab(image, points_68)
    if skin is None:
        return None
    warm = np.median(skin[:, 1:], axis=0) - 128.0
    warmth = float(np.linalg.norm(warm))
    if warmth < _MIN_WARMTH:
        return None
    unit = (warm / warmth).astype(np.float32)
    light = float(np.median(skin[:, 0]))
    iod = float(np.linalg.norm(points_68[45] - points_68[36]))

    # Occluders are large and the mask is soft, so a face is looked at no finer than _WORK_IOD
    # pixels between the eyes: per frame on a target, a 1080p face costs what a 480p one does.
    h, w = image.shape[:2]
    scale = min(1.0, _WORK_IOD / max(iod, 1.0))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        region = cv2.resize(region, size, interpolation=cv2.INTER_NEAREST)
        points_68, iod = points_68 * scale, iod * scale
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    along = (lab[..., 1:].astype(np.float32) - 128.0) @ unit
    opposite = (along < -_OPPOSITE) & (lab[..., 0] > _DARK_FLOOR * light) & (region > 0)
    if not opposite.any():
        return None
    if min(_cheek_warmth(along, points_68)) < _EVEN_LIGHT * warmth:
        # One cheek far cooler than the face as a whole: coloured light from one side (a blue stage
        # light), under which the lit side's own skin has the opposite hue.
        return None
    held = held_out_features(opposite.shape, points_68, iod) == 0
    found = reaching_edge(opposite & held, region)
    if found.sum() < _MIN_AREA * iod * iod:
        return None
    # The object's rim, shadow and highlights have little hue of their own: from what was found,
    # the mask spreads a short way into anything without the skin's warmth.
    near = cv2.dilate(found.astype(np.uint8), disc(max(1, round(_REACH * iod)))) > 0
    cool = (along < _COOL * warmth) & (region > 0) & held & near
    _, labels = cv2.connectedComponents((cool | found).astype(np.uint8))
    seeds = np.unique(labels[found])
    found = np.isin(labels, seeds[seeds > 0])
    grow = max(1, round(_GROW * iod))
    mask = cv2.GaussianBlur(cv2.dilate(found.astype(np.float32), disc(grow)), (0, 0), grow)
    return mask if scale == 1.0 else cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)


def _cheek_warmth(along: np.ndarray, points_68: np.ndarray) -> list[float]:
    """Each cheek patch's median of `along` (chroma along the face's warm direction, Lab units)."""
    out = []
    for patch in _SKIN_PATCHES[:2]:
        hull = cv2.convexHull(points_68[patch].astype(np.float32)).reshape(-1, 2)
        values = along[fill_polygon(along.shape, hull) > 0]
        if len(values) >= 10:
            out.append(float(np.median(values)))
    return out or [np.inf]
