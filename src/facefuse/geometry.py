"""Landmark conventions and the geometry every room shares: alignment, warping, pasting back.

Points are float32 (N, 2) arrays in pixel coordinates (x, y) of the image they came from.
Transforms are OpenCV 2x3 affine matrices mapping image -> crop unless a name says otherwise.
"""

from __future__ import annotations

import cv2
import numpy as np

# dlib / iBUG 300-W 68-point layout.
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
LEFT_EYE = slice(36, 42)  # the eye on the image's left
RIGHT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)

# Index of each point's mirror image across the face's vertical axis.
MIRROR_68 = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17]
    + [27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)

# A symmetric mean 68-point face: the Procrustes mean of 21 dlib fits on real portraits, mirrored and
# averaged, in units of the outer-eye-corner distance with the eye midpoint at the origin. It fixes the
# mesh topology (one triangulation for every face) and is the reference for frontality.
TEMPLATE_68 = np.array(
    [
        (-0.824, 0.070), (-0.816, 0.285), (-0.796, 0.504), (-0.757, 0.720),
        (-0.680, 0.923), (-0.554, 1.102), (-0.396, 1.256), (-0.215, 1.378),
        (0.000, 1.412), (0.215, 1.378), (0.396, 1.256), (0.554, 1.102),
        (0.680, 0.923), (0.757, 0.720), (0.796, 0.504), (0.816, 0.285),
        (0.824, 0.070), (-0.665, -0.090), (-0.572, -0.202), (-0.428, -0.249),
        (-0.270, -0.243), (-0.121, -0.195), (0.121, -0.195), (0.270, -0.243),
        (0.428, -0.249), (0.572, -0.202), (0.665, -0.090), (0.000, -0.046),
        (0.000, 0.092), (0.000, 0.232), (0.000, 0.377), (-0.190, 0.474),
        (-0.098, 0.501), (0.000, 0.528), (0.098, 0.501), (0.190, 0.474),
        (-0.499, 0.000), (-0.411, -0.054), (-0.311, -0.060), (-0.217, 0.003),
        (-0.313, 0.017), (-0.412, 0.021), (0.217, 0.003), (0.311, -0.060),
        (0.411, -0.054), (0.499, 0.000), (0.412, 0.021), (0.313, 0.017),
        (-0.369, 0.756), (-0.240, 0.699), (-0.103, 0.676), (0.000, 0.698),
        (0.103, 0.676), (0.240, 0.699), (0.369, 0.756), (0.243, 0.881),
        (0.109, 0.936), (0.000, 0.948), (-0.109, 0.936), (-0.243, 0.881),
        (-0.324, 0.762), (-0.103, 0.736), (0.000, 0.750), (0.103, 0.736),
        (0.324, 0.762), (0.106, 0.831), (0.000, 0.846), (-0.106, 0.831),
    ],
    dtype=np.float32,
)  # fmt: skip

# ArcFace / InsightFace 5-point template for a 112x112 crop (eyes, nose tip, mouth corners), the
# alignment every learned model in the zoo expects.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners, in the InsightFace order (image-left first)."""
    p = np.asarray(points, np.float32)
    return np.stack(
        [p[LEFT_EYE].mean(0), p[RIGHT_EYE].mean(0), p[30], p[48], p[54]],
    ).astype(np.float32)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst (2x3)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    # In the complex plane a rotation with scale is one number z (dst = z * src), and its least-squares
    # value is closed-form: the same optimum as Umeyama's SVD (no reflection) at a tenth of the cost,
    # which matters because the tracker and the swapper fit several of these per face per frame.
    sc = s[:, 0] + 1j * s[:, 1]
    dc = d[:, 0] + 1j * d[:, 1]
    z = np.vdot(sc, dc) / max(float(np.vdot(sc, sc).real), 1e-12)
    m = np.empty((2, 3))
    m[:, :2] = [[z.real, -z.imag], [z.imag, z.real]]
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m.astype(np.float32)


def face_up(points_68: np.ndarray) -> np.ndarray:
    """The face's own up direction, one outer-eye distance long (the template's unit)."""
    m = similarity(TEMPLATE_68, points_68)
    return m[:, :2] @ np.array([0.0, -1.0], np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float32)
    return (p @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float32))


def arcface_matrix(five: np.ndarray, size: int = 112) -> np.ndarray:
    """The image -> crop transform that puts a face's 5 points on the ArcFace template at `size`."""
    return similarity(five, ARCFACE_112 * (size / 112.0))


def align_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut an aligned square crop; pixels outside the image repeat its border, so edges stay clean."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _footprint(frame_shape: tuple[int, ...], size: tuple[int, int], inv: np.ndarray):
    """The frame box an inverse-warped crop can touch (1 px margin), or None when it misses the frame."""
    h, w = frame_shape[:2]
    corners = np.array([[0, 0], [size[0], 0], [0, size[1]], [size[0], size[1]]], np.float32)
    box = transform_points(corners, inv)
    x0, y0 = np.floor(box.min(0)).astype(int) - 1
    x1, y1 = np.ceil(box.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    local = inv.copy()
    local[:, 2] -= (x0, y0)
    return (slice(y0, y1), slice(x0, x1)), local, (x1 - x0, y1 - y0)


def paste_back(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend an aligned crop back into the frame through a float mask given in crop coordinates.

    Only the bounding box of the mask's footprint is touched; every pixel where the warped mask is 0
    keeps the frame's exact value.
    """
    place = _footprint(frame.shape, (crop.shape[1], crop.shape[0]), invert(matrix))
    if place is None:
        return frame
    region, local, dsize = place
    warped = cv2.warpAffine(crop, local, dsize, flags=cv2.INTER_CUBIC, borderValue=0)
    alpha = cv2.warpAffine(mask.astype(np.float32), local, dsize, borderValue=0)
    out = frame.copy()
    out[region] = blend(frame[region], warped, alpha)
    return out


def paste_change(
    frame: np.ndarray, before: np.ndarray, after: np.ndarray, matrix: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Add what a model changed in a crop (`after - before`) to the frame, through a crop-space mask.

    Unlike `paste_back`, the frame's own detail finer than the crop's resolution stays: a 128 px model
    replaces what it could see of a 400 px face, not the skin texture and grain it never saw. A model
    that changes nothing leaves the frame exactly as it was. Pixels where the mask is 0 are untouched.
    """
    place = _footprint(frame.shape, (after.shape[1], after.shape[0]), invert(matrix))
    if place is None:
        return frame
    region, local, dsize = place
    delta = after.astype(np.float32) - before.astype(np.float32)
    warped = cv2.warpAffine(delta, local, dsize, flags=cv2.INTER_CUBIC, borderValue=0)
    alpha = np.clip(cv2.warpAffine(mask.astype(np.float32), local, dsize, borderValue=0), 0.0, 1.0)[..., None]
    base = frame[region]
    mixed = np.clip(base.astype(np.float32) + alpha * warped + 0.5, 0, 255).astype(np.uint8)
    out = frame.copy()
    out[region] = np.where(alpha > 0, mixed, base)
    return out


def blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 alpha blend that leaves `base` bit-identical wherever alpha is 0."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    mixed = base.astype(np.float32) * (1.0 - a) + top.astype(np.float32) * a
    mixed = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return np.where(a > 0, mixed, base)


# The 5-point alignment templates the learned models were trained with, normalised to a unit crop
# (multiply by the crop size). arcface_128 is the 112 template at the same scale with 8 px more on
# each side and 16 px more below; ffhq_512 is the facexlib template of GFPGAN/CodeFormer/GPEN.
TEMPLATES = {
    "arcface_112_v2": ARCFACE_112 / 112.0,
    "arcface_128": (ARCFACE_112 + np.array([8.0, 0.0], np.float32)) / 128.0,
    "arcface_112_v1": np.array(
        [[0.35473214, 0.45658929], [0.64526786, 0.45658929], [0.5, 0.61154464],
         [0.37913393, 0.776875], [0.62086607, 0.776875]], np.float32,
    ),
    "ffhq_512": np.array(
        [[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
         [0.39308822, 0.72541100], [0.61150205, 0.72490465]], np.float32,
    ),
    "mtcnn_512": np.array(
        [[0.36562865, 0.46733799], [0.63305391, 0.46585885], [0.50019127, 0.61942959],
         [0.39032951, 0.77598822], [0.61178945, 0.77476328]], np.float32,
    ),
}  # fmt: skip


def template_matrix(five: np.ndarray, template: str, size: int) -> np.ndarray:
    """Image -> crop transform putting a face's 5 points on a named template at `size` px (least squares)."""
    return similarity(five, TEMPLATES[template] * float(size))


def warp_crop(image: np.ndarray, five: np.ndarray, template: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(crop, image->crop matrix). A face larger than the crop is cut out at an integer multiple of
    the size and area-averaged down, so it does not alias (warpAffine has no area filter)."""
    m = template_matrix(five, template, size)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    k = int(min(4, np.ceil(1.0 / scale))) if scale < 0.9 else 1
    # Big pixel k c + (k - 1) / 2 is the centre of the k x k block that averages into crop pixel c.
    big = m * np.float32(k)
    big[:, 2] += (k - 1) / 2.0
    crop = cv2.warpAffine(
        image, big, (size * k, size * k), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if k > 1:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop, m
