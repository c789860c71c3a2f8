import cv2
import numpy as np
import pytest

from facefuse.geometry import (
    ARCFACE_112,
    MIRROR_68,
    TEMPLATE_68,
    align_crop,
    arcface_matrix,
    blend,
    five_from_68,
    invert,
    paste_back,
    similarity,
    transform_points,
)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (10, 2)).astype(np.float32)
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = pts @ rot.T + shift
    m = similarity(pts, moved)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-4)
    np.testing.assert_allclose(transform_points(pts, m), moved, atol=1e-3)
    np.testing.assert_allclose(transform_points(moved, invert(m)), pts, atol=1e-3)


def test_template_is_symmetric_and_mirror_is_an_involution():
    assert (MIRROR_68[MIRROR_68] == np.arange(68)).all()
    np.testing.assert_allclose(TEMPLATE_68[MIRROR_68] * [-1, 1], TEMPLATE_68, atol=1e-3)


def test_five_points_follow_the_insightface_order():
    five = five_from_68(TEMPLATE_68 * 100 + 200)
    assert five[0, 0] < five[1, 0]  # image-left eye first
    assert five[3, 0] < five[4, 0]  # image-left mouth corner first
    assert five[0, 1] < five[2, 1] < five[3, 1]  # eyes above nose above mouth


@pytest.mark.parametrize("oversample", [2.0, 3.0])
def test_align_and_paste_back_round_trip(images, pipe, oversample):
    """Cutting an aligned face crop and pasting it back returns the frame to within a grey level."""
    frame = images("images/obama.jpg")
    face = pipe.analyser.analyse(frame, largest_only=True)[0]
    # A crop twice as fine as the frame: then two bicubic resamplings lose under a grey level.
    native = 112 / np.sqrt(abs(np.linalg.det(arcface_matrix(face.landmarks_5, 112)[:, :2])))
    size = int(np.ceil(native * oversample))
    m = arcface_matrix(face.landmarks_5, size)
    crop = align_crop(frame, m, size)
    mask = np.zeros((size, size), np.float32)
    mask[8:-8, 8:-8] = 1.0
    restored = paste_back(frame, crop, m, mask)
    footprint = cv2.warpAffine(mask, invert(m), frame.shape[1::-1])
    inner = cv2.warpAffine(cv2.erode(mask, np.ones((5, 5))), invert(m), frame.shape[1::-1]) > 0.999
    diff = np.abs(restored.astype(int) - frame.astype(int))
    assert inner.sum() > 10_000
    assert diff[inner].mean() <= 1.0
    assert np.median(diff[inner]) <= 1.0
    assert (restored[footprint == 0] == frame[footprint == 0]).all()


def test_paste_back_at_identity_scale_is_exact_to_a_grey_level():
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), (0, 0), 2)
    m = np.array([[1, 0, -50], [0, 1, -40]], np.float32)  # pure translation: crop of 128 at (50, 40)
    crop = align_crop(frame, m, 128)
    out = paste_back(frame, crop, m, np.ones((128, 128), np.float32))
    assert np.abs(out.astype(int) - frame.astype(int)).max() <= 1


def test_blend_leaves_base_bit_identical_where_alpha_is_zero():
    base = np.full((4, 4, 3), 10, np.uint8)
    top = np.full((4, 4, 3), 200, np.uint8)
    alpha = np.zeros((4, 4), np.float32)
    alpha[0, 0] = 0.5
    out = blend(base, top, alpha)
    assert out[0, 0, 0] == 105
    assert (out[1:] == base[1:]).all()


def test_arcface_template_lands_on_itself():
    m = arcface_matrix(ARCFACE_112 * 2 + 30, 112)
    np.testing.assert_allclose(transform_points(ARCFACE_112 * 2 + 30, m), ARCFACE_112, atol=1e-3)


@pytest.mark.parametrize("forehead", [0.25, 0.1])
def test_mesh_triangulation_is_delaunay_and_tiles_the_template(forehead):
    """OpenCV's Subdiv2D replaced scipy for the template mesh: its triangles must still tile the
    points' hull exactly, and no point may lie inside any triangle's circumcircle."""
    from facefuse.swap.mesh import TEMPLATE_68, _delaunay, mesh_points

    pts = mesh_points(TEMPLATE_68, forehead).astype(np.float64)
    tri = _delaunay(pts)
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    areas = 0.5 * np.abs(cross)
    assert (areas > 1e-9).all()
    assert np.isclose(areas.sum(), cv2.contourArea(cv2.convexHull(pts.astype(np.float32))), rtol=1e-4)
    # Circumcentres and radii; a small tolerance lets co-circular points (the template is symmetric) pass.
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
    sa, sb, sc = (a**2).sum(1), (b**2).sum(1), (c**2).sum(1)
    ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
    uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    centre = np.stack([ux, uy], 1)
    radius = np.linalg.norm(a - centre, axis=1)
    dist = np.linalg.norm(pts[None] - centre[:, None], axis=2)
    assert (dist >= radius[:, None] - 1e-6).all()
    assert len({tuple(t) for t in tri.tolist()}) == len(tri)
