"""Things held in front of the source's face, of a hue no face has, are not pasted onto the target."""

import cv2
import numpy as np
import pytest
from swap_helpers import clean_pasted_hidden, swap_region

from facefuse.geometry import face_up
from facefuse.masks.occluders import occluders
from facefuse.swap import MeshSettings, MeshSwapper

OBJECT_RGB = (70, 85, 120)  # a blue-grey handset, darker than the skin
RIM_RGB = (58, 58, 60)  # its dark rim: no hue to tell it from a dark beard on its own


def _landmarks(pipe, image):
    return pipe.analyser.analyse(image, largest_only=True)[0].landmarks_68


def test_the_microphone_at_lin_manuel_mirandas_chin_is_found(pipe, images):
    image = images("images/lin-manuel-miranda.png")
    points = _landmarks(pipe, image)
    iod = float(np.linalg.norm(points[45] - points[36]))
    found = occluders(image, points, swap_region(image, points))
    assert found is not None
    assert 0.02 < found.sum() / iod**2 < 0.3
    # It is below the mouth, where the microphone is, and nowhere near the eyes or brows.
    ys, xs = np.nonzero(found > 0.5)
    down = -face_up(points)
    assert (((np.c_[xs, ys] - points[57]) @ down) > 0).mean() > 0.8
    grid = np.mgrid[: image.shape[0], : image.shape[1]][::-1].transpose(1, 2, 0)
    above_nose_tip = (grid - points[30]) @ down < 0
    assert found[above_nose_tip].max() < 0.05


@pytest.mark.parametrize(
    "name",
    [
        "images/obama.jpg",
        "images/biden2.jpg",
        "images/alex_lacamoire2.jpg",  # a full dark beard
        "images/kit_harington1.jpg",  # a beard
        "images/kit_harington2.jpg",  # a beard in a cold, grey grade: its dark hairs read faintly blue
        "images/rose_leslie1.jpg",  # red hair beside the cheek
    ],
)
def test_faces_and_what_grows_on_them_are_not_occluders(pipe, images, name):
    image = images(name)
    points = _landmarks(pipe, image)
    assert occluders(image, points, swap_region(image, points)) is None


def test_a_photo_without_hue_has_no_opposite_hue(pipe, images):
    """In black and white the microphone is as hueless as the skin: nothing is judged by hue."""
    image = images("images/lin-manuel-miranda.png")
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    points = _landmarks(pipe, image)
    assert occluders(grey, points, swap_region(grey, points)) is None


def _with_handset(image, points):
    """A blue-grey object over one side of the chin, coming in from below the jaw as a held
    microphone does, with a dark, hueless rim and a white highlight (the parts with no hue of their
    own); returns the image and the object's own pixels."""
    iod = float(np.linalg.norm(points[45] - points[36]))
    centre = tuple(int(v) for v in np.round(points[10] + 0.05 * iod * np.array([0.0, 1.0])))
    axes = (round(0.22 * iod), round(0.3 * iod))
    held = np.zeros(image.shape[:2], np.uint8)
    cv2.ellipse(held, centre, axes, 20, 0, 360, 1, -1)
    out = image.copy()
    out[held > 0] = RIM_RGB
    body = np.zeros_like(held)
    cv2.ellipse(body, centre, (axes[0] - round(0.05 * iod), axes[1] - round(0.05 * iod)), 20, 0, 360, 1, -1)
    out[body > 0] = OBJECT_RGB
    cv2.circle(out, centre, round(0.04 * iod), (245, 245, 245), -1)
    return out, held.astype(bool)


def test_the_target_shows_where_something_is_held_to_the_sources_chin(pipe, images):
    source = images("images/obama.jpg")
    face = pipe.analyser.analyse(source, largest_only=True)[0]
    painted, held = _with_handset(source, face.landmarks_68)
    found = occluders(painted, face.landmarks_68, swap_region(painted, face.landmarks_68))
    assert found is not None
    inside = held & (swap_region(painted, face.landmarks_68) > 0)
    assert found[inside].mean() > 0.9

    target = images("images/biden2.jpg")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]
    clean, pasted, hidden = clean_pasted_hidden(target, tface, source, painted, face, hide_occluders=False)

    # Where the object lands on the target: the pixels the painted source changes.
    lands = np.abs(pasted.astype(int) - clean).max(2) > 40
    assert lands.sum() > 200
    assert (
        np.abs(hidden[lands].astype(int) - target[lands]).mean()
        < 0.3 * np.abs(pasted[lands].astype(int) - target[lands]).mean()
    )
    # Away from it the face is the same swap as before.
    far = (swap_region(target, tface.landmarks_68) > 0) & (
        cv2.dilate(lands.astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
    )
    assert np.abs(hidden[far].astype(int) - pasted[far]).mean() < 2


def test_the_targets_microphone_stays_in_front_of_the_new_face(pipe, images):
    """Lin-Manuel Miranda as the target: without this his microphone's head was painted over with
    the source's chin."""
    source = images("images/kit_harington1.jpg")
    sface = pipe.analyser.analyse(source, largest_only=True)[0]
    target = images("images/lin-manuel-miranda.png")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]
    held = occluders(target, tface.landmarks_68, swap_region(target, tface.landmarks_68))
    assert held is not None

    keeping, painting = MeshSwapper(), MeshSwapper(MeshSettings(keep_target_occluders=False))
    kept = keeping.swap(target, tface, keeping.prepare(source, sface))
    painted = painting.swap(target, tface, painting.prepare(source, sface))
    microphone = held > 0.9
    reached = microphone & (np.abs(painted.astype(int) - target).max(2) > 20)
    assert reached.sum() > 100
    assert np.abs(kept[reached].astype(int) - target[reached]).mean() < 3
    # The rest of the face is still swapped.
    face = (swap_region(target, tface.landmarks_68) > 0) & (held == 0)
    assert np.abs(kept[face].astype(int) - painted[face]).mean() < 2


@pytest.mark.parametrize("side", [-1, 1])
def test_a_face_lit_blue_from_one_side_is_not_taken_for_an_occluder(pipe, images, side):
    """Under a blue stage light on one side the lit cheek's own skin has the opposite hue; without
    the even-light check 0.4 eye distances squared of Obama's face were kept as the target's."""
    image = images("images/obama.jpg")
    points = _landmarks(pipe, image)
    iod = float(np.linalg.norm(points[45] - points[36]))
    ramp = np.clip(side * (points[27, 0] - np.arange(image.shape[1])) / (0.8 * iod), 0, 1)[None, :, None]
    gain = np.array([0.7, 0.9, 1.3], np.float32)
    lit = np.clip(image * (1 + ramp * (gain - 1)), 0, 255).astype(np.uint8)
    assert occluders(lit, points, swap_region(lit, points)) is None
