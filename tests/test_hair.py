"""The source's hair across its brow or temple is not pasted onto the target."""

import cv2
import numpy as np
import pytest
from swap_helpers import clean_pasted_hidden, swap_region

from facefuse.masks import fill_polygon
from facefuse.masks.hair import source_hair
from facefuse.swap import MeshSettings, MeshSwapper
from facefuse.swap.mesh import mesh_points

HAIR_RGB = (150, 70, 25)  # auburn


def _with_strand(image, points):
    """A strand falling from the top of the swapped region across the outer end of one brow to the
    temple, as long hair does; returns the image and the strand's own pixels."""
    iod = float(np.linalg.norm(points[45] - points[36]))
    top = mesh_points(points, MeshSettings().forehead)[68:]
    path = np.array(
        [top[2] + (0, -0.1 * iod), points[18] + (0, -0.05 * iod), points[17] + (-0.03 * iod, 0), points[0]]
    )
    strand = np.zeros(image.shape[:2], np.uint8)
    cv2.polylines(strand, [np.round(path).astype(np.int32)], False, 1, max(3, round(0.08 * iod)))
    out = image.copy()
    out[strand > 0] = HAIR_RGB
    return out, strand.astype(bool)


@pytest.fixture(scope="module")
def source(pipe, images):
    image = images("images/obama.jpg")
    return image, pipe.analyser.analyse(image, largest_only=True)[0].landmarks_68


def test_a_clean_face_has_no_hair_to_hide(pipe, images):
    for name in ("images/obama.jpg", "images/lin-manuel-miranda.png", "images/biden2.jpg"):
        image = images(name)
        points = pipe.analyser.analyse(image, largest_only=True)[0].landmarks_68
        assert source_hair(image, points, swap_region(image, points)) is None, name


def test_a_strand_across_the_temple_is_found_and_the_eyes_are_not(source):
    image, points = source
    painted, strand = _with_strand(image, points)
    region = swap_region(image, points)
    hidden = source_hair(painted, points, region)
    assert hidden is not None
    on_strand = strand & (region > 0)
    assert hidden[on_strand].mean() > 0.6
    eyes = fill_polygon(image.shape[:2], points[36:42]) | fill_polygon(image.shape[:2], points[42:48])
    assert hidden[eyes > 0].max() < 0.05
    # Skin well away from the strand stays the source's.
    far = (region > 0) & (cv2.dilate(strand.astype(np.uint8), np.ones((61, 61), np.uint8)) == 0)
    assert hidden[far].mean() < 0.01


def test_the_target_shows_where_the_source_has_hair(pipe, source, images):
    image, points = source
    painted, _ = _with_strand(image, points)
    face = pipe.analyser.analyse(painted, largest_only=True)[0]
    target = images("images/biden.jpg")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]

    clean, pasted, hidden = clean_pasted_hidden(target, tface, image, painted, face, hide_hair=False)

    # Where the strand lands on the target: the pixels the painted source changes.
    lands = np.abs(pasted.astype(int) - clean).max(2) > 40
    assert lands.sum() > 50
    strand_like = np.linalg.norm(pasted[lands].astype(float) - HAIR_RGB, axis=1).mean()
    assert np.linalg.norm(hidden[lands].astype(float) - HAIR_RGB, axis=1).mean() > strand_like + 10
    # There the target's own pixels show through instead.
    assert (
        np.abs(hidden[lands].astype(int) - target[lands]).mean()
        < 0.5 * np.abs(pasted[lands].astype(int) - target[lands]).mean()
    )


def _with_fringe(image, points):
    """A fringe of hair from the top of the swapped region down to just above one brow, as bangs
    fall; returns the image and the fringe's own pixels."""
    iod = float(np.linalg.norm(points[45] - points[36]))
    top = mesh_points(points, MeshSettings().forehead)[68:]
    up = top[2] - points[19]
    path = np.array([top[0] + 0.4 * up, top[2] + 0.4 * up, points[20] + 0.25 * up, points[18] + 0.25 * up])
    fringe = np.zeros(image.shape[:2], np.uint8)
    cv2.fillConvexPoly(fringe, np.round(path).astype(np.int32), 1)
    cv2.polylines(fringe, [np.round(path[:2]).astype(np.int32)], False, 1, max(3, round(0.1 * iod)))
    out = image.copy()
    out[fringe > 0] = HAIR_RGB
    return out, fringe.astype(bool)


def test_the_targets_own_fringe_stays_in_front_of_the_new_face(pipe, images):
    """Bangs across the target's forehead are kept; without this the source's forehead was painted
    over them (a girl's fringe in a group photo became a brown smear)."""
    source = images("images/kit_harington1.jpg")
    sface = pipe.analyser.analyse(source, largest_only=True)[0]
    clean = images("images/obama.jpg")
    tface = pipe.analyser.analyse(clean, largest_only=True)[0]
    target, fringe = _with_fringe(clean, tface.landmarks_68)

    keeping, painting = MeshSwapper(), MeshSwapper(MeshSettings(keep_target_hair=False))
    kept = keeping.swap(target, tface, keeping.prepare(source, sface))
    painted = painting.swap(target, tface, painting.prepare(source, sface))

    # The fringe pixels the swap would reach: those that change when nothing keeps them.
    reached = fringe & (np.abs(painted.astype(int) - target).max(2) > 40)
    assert reached.sum() > 200
    assert np.abs(kept[reached].astype(int) - target[reached]).mean() < 10
    # The rest of the face is still swapped.
    face = swap_region(target, tface.landmarks_68).astype(bool) & ~cv2.dilate(
        fringe.astype(np.uint8), np.ones((41, 41))
    ).astype(bool)
    assert np.abs(kept[face].astype(int) - painted[face]).mean() < 2
