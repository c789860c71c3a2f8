"""Glasses: a target's stay in front of the new face, a source's are not pasted onto the target."""

import cv2
import numpy as np
import pytest

from facefuse.geometry import TEMPLATE_68, similarity
from facefuse.masks.glasses import find_glasses
from facefuse.swap import MeshSettings, MeshSwapper

DARK = (22, 22, 22)
METAL = (215, 215, 220)


def _frame_pixels(shape, points, thickness=0.035, half=(0.26, 0.17), centre=(0.38, 0.04)):
    """A pair of rounded-rectangle glasses drawn in template units (outer-eye-corner distance 1)
    onto the face with these landmarks, with its bridge and the start of its arms: a bool mask."""
    to_image = similarity(TEMPLATE_68, points)
    scale = float(np.hypot(to_image[0, 0], to_image[0, 1]))
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    rim_x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.5 * half[0]
    rim_y = np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.5 * half[1] + centre[1]
    cx, hw, hh = centre[0], half[0], half[1]
    lines = []
    for side in (-1, 1):
        lines.append((np.c_[side * (rim_x + cx), rim_y], True))
        arm = [[side * (cx + hw), centre[1] - 0.6 * hh], [side * 0.98, centre[1] - 0.8 * hh]]
        lines.append((np.array(arm), False))
    bridge = [[-(cx - hw), centre[1] - 0.5 * hh], [0, centre[1] - 0.7 * hh], [cx - hw, centre[1] - 0.5 * hh]]
    lines.append((np.array(bridge), False))
    mask = np.zeros(shape[:2], np.uint8)
    for line, closed in lines:
        pts = np.c_[line, np.ones(len(line))] @ to_image.T
        width = max(1, round(thickness * scale))
        cv2.polylines(mask, [np.round(pts * 8).astype(np.int32)], closed, 1, width, cv2.LINE_8, shift=3)
    return mask.astype(bool)


def _wearing(image, frame, colour):
    out = image.copy()
    out[frame] = colour
    return out


@pytest.fixture(scope="module")
def obama(pipe, images):
    image = images("images/obama.jpg")
    return image, pipe.analyser.analyse(image, largest_only=True)[0]


def test_drawn_glasses_are_found_with_their_frame(obama):
    image, face = obama
    frame = _frame_pixels(image.shape, face.landmarks_68)
    found = find_glasses(_wearing(image, frame, DARK), face.landmarks_68)
    assert found is not None
    glasses, mask = found
    assert glasses.dark
    assert mask.shape == image.shape[:2]
    # Nearly all the frame over the face, and little else there (a brow hair or a crease beside the
    # rim at most): this mask is what stays the target's.
    x0, y0, x1, y1 = face.box.astype(int)
    in_face = np.zeros(frame.shape, bool)
    in_face[y0:y1, x0:x1] = True
    on = (mask > 0.5) & in_face
    assert on[frame & in_face].mean() > 0.85
    beside = cv2.dilate(frame.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert on[~beside].sum() < 0.06 * on.sum()


def test_a_bright_metal_frame_on_darker_skin_is_found(obama):
    image, face = obama
    frame = _frame_pixels(image.shape, face.landmarks_68, thickness=0.02, half=(0.24, 0.15))
    found = find_glasses(_wearing(image, frame, METAL), face.landmarks_68)
    assert found is not None and not found[0].dark


def test_a_window_gives_the_same_mask_cut_to_it(obama):
    image, face = obama
    glasses = _wearing(image, _frame_pixels(image.shape, face.landmarks_68), DARK)
    whole = find_glasses(glasses, face.landmarks_68)[1]
    x0, y0, x1, y1 = face.box.astype(int)
    part = find_glasses(glasses, face.landmarks_68, (x0, y0, x1, y1))[1]
    assert np.abs(part - whole[y0:y1, x0:x1]).max() < 1e-4


@pytest.mark.parametrize(
    "name",
    [
        "images/obama.jpg",
        "images/obama2.jpg",
        "images/biden.jpg",
        "images/biden2.jpg",
        "images/alex-lacamoire.png",
        "images/alex_lacamoire2.jpg",
        "images/kit_harington1.jpg",
        "images/kit_harington2.jpg",
        "images/rose_leslie1.jpg",
        "images/rose_leslie2.jpg",
        "images/lin-manuel-miranda.png",
        "groups/bald_guys.jpg",
    ],
)
def test_no_glasses_are_found_on_faces_without_them(pipe, images, name):
    # Wrinkles, beards, creases under the eyes, side light: none of these is a pair of rims.
    image = images(name)
    faces = pipe.analyser.analyse(image)
    assert faces
    for face in faces:
        assert find_glasses(image, face.landmarks_68) is None, (name, face.box)


def _swap(pipe, source, target, **settings):
    swapper = MeshSwapper(MeshSettings(**settings))
    src_face = pipe.analyser.analyse(source, largest_only=True)[0]
    tgt_face = pipe.analyser.analyse(target, largest_only=True)[0]
    return swapper.swap(target, tgt_face, swapper.prepare(source, src_face))


def test_the_targets_glasses_stay_in_front_of_the_new_face(pipe, images, obama):
    image, face = obama
    frame = _frame_pixels(image.shape, face.landmarks_68)
    target = _wearing(image, frame, DARK)
    source = images("images/kit_harington1.jpg")
    core = cv2.erode(frame.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    kept = _swap(pipe, source, target)
    lost = _swap(pipe, source, target, keep_target_glasses=False)
    diff_kept = np.abs(kept[core].astype(int) - target[core]).mean()
    diff_lost = np.abs(lost[core].astype(int) - target[core]).mean()
    assert diff_kept < 3.0
    assert diff_lost > 40.0  # without it the frame inside the face region was replaced by skin
    # The face itself is still swapped: away from the frame the eyes' region changes.
    eyes = np.zeros(frame.shape, bool)
    lo, hi = face.landmarks_68[36:48].min(0).astype(int), face.landmarks_68[36:48].max(0).astype(int)
    eyes[lo[1] : hi[1], lo[0] : hi[0]] = True
    assert np.abs(kept[eyes & ~frame].astype(int) - target[eyes & ~frame]).mean() > 10.0


def test_the_sources_glasses_are_not_pasted_onto_the_target(pipe, images, obama):
    image, face = obama
    source = _wearing(image, _frame_pixels(image.shape, face.landmarks_68), DARK)
    target = images("images/kit_harington1.jpg")
    tgt_face = pipe.analyser.analyse(target, largest_only=True)[0]
    x0, y0, x1, y1 = tgt_face.box.astype(int)

    def frame_dark(out):
        # Pixels the swap made near-black: the drawn frame, carried over (tone matching lifts most of it).
        grey_out = cv2.cvtColor(out[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(int)
        grey_tgt = cv2.cvtColor(target[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(int)
        return int(((grey_out < 45) & (grey_tgt - grey_out > 40)).sum())

    carried = frame_dark(_swap(pipe, source, target, hide_source_glasses=False))
    hidden = frame_dark(_swap(pipe, source, target))
    clean = frame_dark(_swap(pipe, image, target))
    assert carried > 150
    assert hidden < clean + 0.1 * carried


def test_a_blown_out_face_is_not_taken_for_glasses(pipe, images):
    # Most of the eye band clipped white: the band's typical curvature was 0, and any faint line
    # passed for a frame.
    image = images("images/obama3.jpg")
    face = pipe.analyser.analyse(image, largest_only=True)[0]
    blown = np.clip(image.astype(np.float32) * 3.9, 0, 255).astype(np.uint8)
    assert find_glasses(blown, face.landmarks_68) is None


def test_small_faces_are_not_searched_and_windows_keep_their_shape(obama):
    image, face = obama
    glasses = _wearing(image, _frame_pixels(image.shape, face.landmarks_68), DARK)
    # A window reaching past the image, given as an array, and an empty one.
    w = image.shape[1]
    window = np.array([w - 50, -20, w + 30, 40])
    assert find_glasses(glasses, face.landmarks_68, window)[1].shape == (60, 80)
    assert find_glasses(glasses, face.landmarks_68, (10, 10, 10, 30))[1].shape == (20, 0)
    # The same glasses on a face under 40 px between the outer eye corners are not looked for.
    small = cv2.resize(glasses, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
    assert face.eye_distance * 0.15 < 40
    assert find_glasses(small, face.landmarks_68 * 0.15) is None
