"""The built-in mesh swapper, judged on real photos with the same dlib models the judge uses."""

import dataclasses

import cv2
import numpy as np
import pytest

from facefuse.cli import demo_images
from facefuse.geometry import INNER_LIPS
from facefuse.masks import fill_polygon
from facefuse.swap import MeshSettings
from facefuse.swap.mesh import MeshSwapper, _band_step, _energy, _fine, _match_colourfulness, mouth_open


@pytest.fixture(scope="module")
def swap(pipe, images):
    """(source name, target name) -> (output, target face, source face), computed once per pair."""
    done = {}

    def run(src_name, tgt_name):
        if (src_name, tgt_name) not in done:
            src, tgt = images(src_name), images(tgt_name)
            sface = pipe.analyser.analyse(src, largest_only=True, descriptors=True)[0]
            tface = pipe.analyser.analyse(tgt, largest_only=True, descriptors=True)[0]
            out = pipe.swapper.swap(tgt, tface, pipe.swapper.prepare(src, sface))
            done[src_name, tgt_name] = out, tface, sface
        return done[src_name, tgt_name]

    return run


def _lab_mean(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[mask].astype(float).mean(0)


def _inner_face(shape, tface) -> np.ndarray:
    pts = tface.landmarks_68
    return fill_polygon(shape[:2], np.vstack([pts[3:14], pts[17:27][::-1]])).astype(bool)


def _swap_onto(pipe, source: np.ndarray, altered: np.ndarray, placed_by: np.ndarray, swapper=None):
    """The mesh swap of `source`'s face onto `altered` (a target photo changed in light or colour),
    at the face found in `placed_by` (the photo before the change), by `swapper` (default: the
    pipeline's). Returns (output, target face)."""
    swapper = swapper or pipe.swapper
    sface = pipe.analyser.analyse(source, largest_only=True)[0]
    tface = pipe.analyser.analyse(placed_by, largest_only=True)[0]
    return swapper.swap(altered, tface, swapper.prepare(source, sface)), tface


PAIRS = [
    ("images/kit_harington1.jpg", "images/obama3.jpg"),
    ("images/kit_harington1.jpg", "images/biden2.jpg"),
    ("images/lin-manuel-miranda.png", "images/biden.jpg"),
]


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_identity_moves_to_the_source_and_landmarks_stay(pipe, swap, src, tgt):
    out, tface, sface = swap(src, tgt)
    found = pipe.analyser.analyse(out, largest_only=True, descriptors=True)[0]
    d_src, d_tgt = found.distance(sface.descriptor), found.distance(tface.descriptor)
    assert d_src < d_tgt, "the output should look more like the source than the target"
    assert d_src < tface.distance(sface.descriptor) - 0.1, "the swap should move identity a long way"
    nme = np.linalg.norm(found.landmarks_68 - tface.landmarks_68, axis=1).mean() / tface.eye_distance
    assert nme < 0.035, "pose and expression are the target's"


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_only_the_face_changes(swap, images, src, tgt):
    out, tface, _ = swap(src, tgt)
    target = images(tgt)
    changed = (out != target).any(axis=2)
    assert changed.sum() > 0.3 * tface.area
    # Everything outside the face outline (jaw, and at most half an eye distance above the brows) is
    # bit-identical: no hair, background or neck is touched.
    up = tface.landmarks_68[27] - tface.landmarks_68[8]
    up /= np.linalg.norm(up)
    brows_raised = tface.landmarks_68[17:27] + 0.5 * tface.eye_distance * up
    outline = np.vstack([tface.landmarks_68[:17], brows_raised[::-1]])
    margin = int(0.05 * tface.eye_distance) * 2 + 1
    allowed = cv2.dilate(fill_polygon(changed.shape, outline), np.ones((margin, margin), np.uint8)).astype(
        bool
    )
    assert not changed[~allowed].any()


def test_open_target_mouth_keeps_its_teeth(swap, images):
    out, tface, _ = swap("images/biden.jpg", "images/obama2.jpg")
    assert mouth_open(tface.landmarks_68)
    inner = fill_polygon(out.shape[:2], tface.landmarks_68[INNER_LIPS]).astype(bool)
    assert inner.sum() > 100
    assert (out[inner] == images("images/obama2.jpg")[inner]).all()


def test_closed_target_mouth_never_shows_the_source_teeth(pipe, images):
    """Paint the source's open mouth pure green: none of it may reach a closed target mouth."""
    src = np.array(images("images/obama.jpg"))
    sface = pipe.analyser.analyse(src, largest_only=True)[0]
    assert mouth_open(sface.landmarks_68)
    src[fill_polygon(src.shape[:2], sface.landmarks_68[INNER_LIPS]).astype(bool)] = (0, 255, 0)
    target = images("images/rose_leslie1.jpg")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]
    assert not mouth_open(tface.landmarks_68)
    out = pipe.swapper.swap(target, tface, pipe.swapper.prepare(src, sface))
    green = (out[..., 1].astype(int) - np.maximum(out[..., 0], out[..., 2]).astype(int)) > 60
    assert green.sum() == 0


def test_tone_follows_the_target(swap, images):
    """Skin colour inside the face is the target's cast, not the source's (Biden's warm portrait light)."""
    out, tface, sface = swap("images/biden.jpg", "images/obama2.jpg")
    inner = fill_polygon(out.shape[:2], tface.landmarks_68[[1, 2, 3, 13, 14, 15, 35, 31]]).astype(bool)

    src_img = images("images/biden.jpg")
    src_mask = fill_polygon(src_img.shape[:2], sface.landmarks_68[[1, 2, 3, 13, 14, 15, 35, 31]]).astype(bool)
    tgt_lab = _lab_mean(images("images/obama2.jpg"), inner)
    assert np.linalg.norm(_lab_mean(out, inner) - tgt_lab) < 0.5 * np.linalg.norm(
        _lab_mean(src_img, src_mask) - tgt_lab
    )


def test_fine_detail_is_matched_to_the_target(swap, images):
    """A soft source on a large, sharp target must not look soft (Lin-Manuel onto Biden's close-up).
    At the finest scale it came out at 0.64 of the target's detail (the boost under-delivered, and
    was measured where his hidden hair's edges counted as detail); 0.77 now."""
    out, tface, sface = swap("images/lin-manuel-miranda.png", "images/biden.jpg")
    target = images("images/biden.jpg")
    inner = _inner_face(out.shape, tface)

    def fine(img, sigma=2.5):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.abs(g - cv2.GaussianBlur(g, (0, 0), sigma))[inner].mean()

    plain = MeshSwapper(type(MeshSwapper().settings)(detail=0.0))
    soft = plain.swap(target, tface, plain.prepare(images("images/lin-manuel-miranda.png"), sface))
    assert fine(out) > fine(soft) * 1.2
    assert fine(out) > 0.7 * fine(target)
    finest = tface.eye_distance / 60  # the scale the swap matches (and the judge's)
    assert fine(out, finest) > 0.72 * fine(target, finest)


def test_the_detail_boost_delivers_the_energy_asked_for():
    """Adding k times a fine band does not raise the fine band's energy k-fold (a difference of
    Gaussians is no projection): the step is solved for, so the result has what was asked."""
    rng = np.random.default_rng(3)
    grey = cv2.GaussianBlur(rng.normal(128, 40, (120, 120)).astype(np.float32), (0, 0), 1.5)
    inside = np.ones(grey.shape, bool)
    fine = _fine(grey, 1.2)
    have = _energy(fine, inside)
    for gain in (0.7, 1.5, 2.2):
        step = _band_step(fine, fine, 1.2, inside, gain * have)
        got = _energy(_fine(grey + step * fine, 1.2), inside)
        assert abs(got / have - gain) < 0.03 * gain
        naive = _energy(_fine(grey + (gain - 1.0) * fine, 1.2), inside)
        assert abs(naive / have - gain) > 0.05 * gain  # what the plain gain gave


def test_a_face_turned_away_hides_its_far_side_instead_of_tearing(pipe, images):
    """Fold the target's right half over its nose, as a head turned past profile would: those
    triangles face away and are hidden, so nothing is drawn beyond the visible side."""
    swapper = pipe.swapper
    src = images("images/obama.jpg")
    sface = pipe.analyser.analyse(src, largest_only=True)[0]
    target = images("images/obama3.jpg")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]
    folded = tface.landmarks_68.copy()
    nose_x = folded[27:31, 0].mean()
    right = folded[:, 0] > nose_x + 2
    folded[right, 0] = nose_x - 0.3 * (folded[right, 0] - nose_x)  # mirrored across: winding flips
    from dataclasses import replace

    turned = replace(tface, landmarks_68=folded)
    out = swapper.swap(target, turned, swapper.prepare(src, sface))
    changed = (out != target).any(axis=2)
    assert changed.any()
    assert not changed[:, int(nose_x + 0.15 * tface.eye_distance) :].any()


def test_a_big_source_shrunk_through_its_halvings_swaps_like_a_direct_shrink(pipe, images):
    # A 1080p source on a small target: the shrink starts from a prepared halving, not the full crop.
    src, tgt = images("images/obama-1080p.jpg"), images("images/obama_small.jpg")
    sface = pipe.analyser.analyse(src, largest_only=True)[0]
    tface = pipe.analyser.analyse(tgt, largest_only=True)[0]
    prepared = pipe.swapper.prepare(src, sface)
    assert tface.eye_distance / sface.eye_distance < 0.5 and len(prepared.pyramid) > 2
    halved = pipe.swapper.swap(tgt, tface, prepared)
    direct = pipe.swapper.swap(tgt, tface, dataclasses.replace(prepared, pyramid=()))
    changed = np.any(direct != tgt, axis=2)
    diff = (halved.astype(np.float32) - direct.astype(np.float32))[changed]
    assert changed.sum() > 500
    psnr = 10 * np.log10(255**2 / max(float(np.mean(diff**2)), 1e-6))
    assert psnr > 35, "the same picture, only filtered in two steps (a misplaced mesh would be far off)"


def test_an_underexposed_source_gives_the_same_face_as_a_well_exposed_one(pipe, images):
    """Exposure is a gain, and the tone transfer is one too, so a dark source must come out as it does
    when well exposed (a fixed bound on the gain used to clip it per channel into a blotchy face)."""
    src, tgt = images("images/biden.jpg"), images("images/rose_leslie2.jpg")
    dark = np.clip(src.astype(np.float32) * 0.45 + 0.5, 0, 255).astype(np.uint8)
    sface = pipe.analyser.analyse(src, largest_only=True)[0]
    tface = pipe.analyser.analyse(tgt, largest_only=True)[0]
    normal = pipe.swapper.swap(tgt, tface, pipe.swapper.prepare(src, sface))
    darker = pipe.swapper.swap(tgt, tface, pipe.swapper.prepare(dark, sface))
    inner = _inner_face(tgt.shape, tface)
    assert np.linalg.norm(_lab_mean(darker, inner) - _lab_mean(normal, inner)) < 1.0  # was 12.6


def test_a_face_on_a_very_dark_target_is_as_dark_as_the_target(pipe, images):
    """A target in deep shadow (gamma 1.8 at 0.7x) needs the face darkened past 3x: a fixed lower
    bound on the gain left it lit and grey in a dark photo (13 levels of 8-bit lightness here)."""
    src, tgt = images("images/kit_harington1.jpg"), images("images/obama3.jpg")
    dark = np.clip(255 * (tgt.astype(np.float32) / 255) ** 1.8 * 0.7, 0, 255).astype(np.uint8)
    out, tface = _swap_onto(pipe, src, dark, tgt)
    inner = _inner_face(tgt.shape, tface)
    assert abs(_lab_mean(out, inner)[0] - _lab_mean(dark, inner)[0]) < 4.0


def test_a_face_on_an_overexposed_target_keeps_the_light_the_clip_cut_off(pipe, images):
    """On a target at 1.5x exposure the gain lifts the source's bright half past 255; a bare clip
    lost that light and left the face darker and greyer than its target (5.7 delta-E here)."""
    src, tgt = images("images/alex-lacamoire.png"), images("images/obama.jpg")
    over = np.clip(tgt.astype(np.float32) * 1.5 + 0.5, 0, 255).astype(np.uint8)
    out, tface = _swap_onto(pipe, src, over, tgt)
    inner = _inner_face(tgt.shape, tface)
    assert np.linalg.norm(_lab_mean(out, inner) - _lab_mean(over, inner)) < 3.5


def test_a_sharp_source_on_a_soft_target_is_softened_to_match(pipe, images):
    """An out-of-focus target gets a face as soft as itself, not a crisp one pasted on: scaling only
    the finest band left it 1.5x the target's fine detail here, a sharpness step the eye sees."""
    src, tgt = images("images/kit_harington1.jpg"), cv2.GaussianBlur(images("images/obama3.jpg"), (0, 0), 2.0)
    out, tface = _swap_onto(pipe, src, tgt, tgt)
    inner = _inner_face(tgt.shape, tface)

    def fine(img):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.abs(g - cv2.GaussianBlur(g, (0, 0), 1.5))[inner].mean()

    assert 0.8 * fine(tgt) < fine(out) < 1.2 * fine(tgt)


def test_a_black_and_white_target_gets_a_black_and_white_face(pipe, images):
    """The tone step gives the face the target's colour only at low frequency: on a grey photo the
    source's eyes, lips and blotches stayed coloured (a spread of up to 142 levels between channels)."""
    src, tgt = images("images/obama.jpg"), images("images/rose_leslie2.jpg")
    grey = np.repeat(cv2.cvtColor(tgt, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    out, _ = _swap_onto(pipe, src, grey, grey)
    assert (out != grey).any(axis=2).sum() > 20000  # the face was swapped...
    assert (out.max(axis=2) == out.min(axis=2)).all()  # ...and not a pixel of it has colour


def test_a_faded_target_tones_down_the_sources_fine_colour(pipe, images):
    """On a target faded to 10% saturation, biden.jpg's ruddy blotches came out at four times the
    target's fine colour; now about twice (the soft edge, where the tone step rules, keeps some)."""
    src, tgt = images("images/biden.jpg"), images("images/obama3.jpg")
    grey = cv2.cvtColor(tgt, cv2.COLOR_RGB2GRAY)[..., None].astype(np.float32)
    faded = np.clip(grey + 0.1 * (tgt - grey), 0, 255).astype(np.uint8)
    out, tface = _swap_onto(pipe, src, faded, tgt)
    inner = _inner_face(tgt.shape, tface)

    def fine_colour(img):
        f = img.astype(np.float32)
        chroma = f - cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None].astype(np.float32)
        return np.abs(chroma - cv2.GaussianBlur(chroma, (0, 0), 0.11 * tface.eye_distance))[inner].mean()

    assert fine_colour(out) < 2.8 * fine_colour(faded)


def _red_detail(img: np.ndarray, mask: np.ndarray, sigma: float) -> float:
    """Fine colour along red against green and blue: the red axis minus its blur, inside `mask`."""
    axis = np.cross([0.299, 0.587, 0.114], [1.0, 1.0, 1.0]).astype(np.float32)
    red = img.astype(np.float32) @ (axis / np.linalg.norm(axis))
    return float(np.abs(red - cv2.GaussianBlur(red, (0, 0), sigma))[mask].mean())


def test_a_ruddy_lined_source_is_not_streaked_red_on_a_smooth_pale_target(pipe):
    """The demo: Grace Hopper's shadowed folds and blotches came out as red streaks on the astronaut's
    smooth, pale face, at 2.5 times the red detail the target has; now about as much as it has."""
    hopper, astronaut = demo_images()
    src, tgt = pipe.load(hopper), pipe.load(astronaut)
    out, tface = _swap_onto(pipe, src, tgt, tgt)
    inner = _inner_face(tgt.shape, tface)
    sigma = 0.11 * tface.eye_distance
    assert _red_detail(out, inner, sigma) < 1.4 * _red_detail(tgt, inner, sigma)


def test_toning_down_red_detail_leaves_both_grey_images_alone():
    """The red axis is the one colour direction that moves neither OpenCV's grey (the judge's) nor
    the channels' plain mean (dlib's): features and landmarks stay where they were."""
    rng = np.random.default_rng(3)
    skin = np.full((120, 120, 3), (200.0, 150.0, 130.0), np.float32)
    source = skin + rng.normal(0, 1, skin.shape).astype(np.float32)
    source[40:44, 10:110] = (150, 80, 60)  # a red fold
    source[70:73, 20:100] = (160, 90, 75)
    target = np.clip(skin + rng.normal(0, 1, skin.shape), 0, 255).astype(np.uint8)
    weight = np.ones((120, 120), np.float32)
    out = _match_colourfulness(source, target, weight, 8.0, weight)
    inside = np.ones((120, 120), bool)
    assert _red_detail(out, inside, 8.0) < 0.5 * _red_detail(source, inside, 8.0)
    grey = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out @ grey, source @ grey, atol=0.01)
    np.testing.assert_allclose(out.mean(axis=2), source.mean(axis=2), atol=0.01)


def _mid_band(img: np.ndarray, inside: np.ndarray, eye_distance: float) -> float:
    """RMS of the grey image between the fine-detail and tone scales (wrinkles, folds) inside."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    band = cv2.GaussianBlur(g, (0, 0), eye_distance / 60) - cv2.GaussianBlur(g, (0, 0), 0.11 * eye_distance)
    return float(np.sqrt((band[inside] ** 2).mean()))


def test_a_lined_face_on_a_smooth_target_is_brought_part_way_to_its_contrast(pipe, images):
    """Biden's folds on Rose Leslie at half her mid-scale contrast: the core of the face (not only
    its edge) comes part of the way down to the target's (7% of its mid band at the default share,
    13% at all of it), so the source's lines read less as an edge the target never had, and no
    further than `core_contrast` asks, so its features stay."""
    source, target = images("images/biden.jpg"), images("images/rose_leslie1.jpg")
    tface = pipe.analyser.analyse(target, largest_only=True)[0]
    iod = tface.eye_distance
    g = target.astype(np.float32)
    mid = cv2.GaussianBlur(g, (0, 0), iod / 60) - cv2.GaussianBlur(g, (0, 0), 0.11 * iod)
    smooth = np.clip(g - 0.5 * mid, 0, 255).astype(np.uint8)
    core = cv2.erode(_inner_face(target.shape, tface).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    bands = {}
    for share in (0.0, 0.5, 1.0):
        swapper = MeshSwapper(MeshSettings(core_contrast=share))
        out, _ = _swap_onto(pipe, source, smooth, target, swapper)
        bands[share] = _mid_band(out, core, iod)
    assert bands[0.5] < 0.95 * bands[0.0]
    assert bands[1.0] < 0.95 * bands[0.5]


def _rim_contrast(out: np.ndarray, tgt: np.ndarray, tface) -> float:
    """Edge strength on the rim of the region the swap changed, output over target (above 1: the
    face's edge shows), measured as the quality judge does."""
    diff = cv2.GaussianBlur(np.abs(out.astype(np.float32) - tgt.astype(np.float32)).max(2), (0, 0), 2)
    _, labels = cv2.connectedComponents((diff > 10).astype(np.uint8))
    nose = np.round(tface.landmarks_68[30]).astype(int)
    changed = (labels == labels[nose[1], nose[0]]).astype(np.uint8)
    w = max(2, int(tface.eye_distance / 25))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * w + 1, 2 * w + 1))
    rim = (cv2.dilate(changed, kernel) - cv2.erode(changed, kernel)).astype(bool)

    def grad(img):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))

    return float(grad(out)[rim].mean() / grad(tgt)[rim].mean())


FLAT_PAIRS = [
    ("alex-lacamoire.png", "obama.jpg"),
    ("kit_harington1.jpg", "lin-manuel-miranda.png"),
    ("lin-manuel-miranda.png", "obama-720p.jpg"),
]


@pytest.mark.parametrize(("src", "tgt"), FLAT_PAIRS)
def test_a_flat_target_gets_no_rim_of_the_sources_contrast(pipe, images, src, tgt):
    """On a target at 0.6x contrast the face kept the source's mid-scale contrast right up to its
    soft edge, which drew a rim (1.00-1.08 here); towards the edge it now follows the target's, which
    takes 0.08-0.11 off (0.93-0.99: a soft source's fine detail, now brought up to nine tenths of the
    target's, is on this rim as well)."""
    source, target = images(f"images/{src}"), images(f"images/{tgt}")
    flat = np.clip((target.astype(np.float32) - 128) * 0.6 + 128, 0, 255).astype(np.uint8)
    # Kept in front of the new face, Lin-Manuel Miranda's microphone changes which pixels this
    # measure takes for the changed region's rim (0.94 -> 0.97 on that pair; the judge's seam on
    # the real photo is unchanged, 0.928 -> 0.927). This test is about the face's own edge.
    rims = {}
    for edge_contrast in (True, False):
        swapper = MeshSwapper(MeshSettings(keep_target_occluders=False, edge_contrast=edge_contrast))
        out, tface = _swap_onto(pipe, source, flat, target, swapper)
        rims[edge_contrast] = _rim_contrast(out, flat, tface)
    assert rims[True] < 1.0
    assert rims[True] < rims[False] - 0.06
