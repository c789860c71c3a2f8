"""Face tracking through video: the One Euro filter, the jitter measure and the tracker on a real clip."""

import av
import cv2
import numpy as np
import pytest
from conftest import media

from facefuse.analysis.track import (
    FaceTracker,
    OneEuroFilter,
    TrackerSettings,
    analysed_landmarks,
    landmark_jitter,
)
from facefuse.geometry import TEMPLATE_68

CLIP = "video/short_hamilton_clip.mp4"
# The clip's main shot: one singer's face, moving fast, from frame 82 up to a cut to the audience at 211.
SHOT = slice(82, 211)
CUT = 211
FPS = 30000 / 1001


@pytest.fixture(scope="module")
def clip() -> list[tuple[np.ndarray, float]]:
    """(RGB frame, time) for the first 225 frames of the Hamilton clip."""
    out = []
    with av.open(str(media(CLIP))) as container:
        for frame in container.decode(video=0):
            out.append((frame.to_ndarray(format="rgb24"), float(frame.time)))
            if len(out) == 225:
                break
    return out


# --- One Euro filter ---------------------------------------------------------------------------------


def test_one_euro_passes_a_still_signal_unchanged():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    x = np.array([[3.0, -2.0], [7.5, 1.0]])
    for i in range(20):
        assert np.allclose(f(x, i / 30), x)


def test_one_euro_removes_most_noise_from_a_still_signal():
    # Landmark noise is about 2% of an eye distance: in those units (scale 1), with the tracker's beta.
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=6.0)
    noisy = 5.0 + rng.normal(0, 0.02, (300, 68, 2))
    out = np.array([f(x, i / 30) for i, x in enumerate(noisy)])[30:]
    assert out.std() < 0.6 * noisy[30:].std()
    assert abs(out.mean() - 5.0) < 0.002


def test_one_euro_follows_a_step_within_a_few_frames():
    f = OneEuroFilter(min_cutoff=1.0, beta=6.0)
    for i in range(30):
        f(np.zeros(4), i / 30)
    out = [f(np.full(4, 10.0), (30 + i) / 30) for i in range(6)]
    assert out[0].min() > 1.0, "the jump starts moving the output at once"
    assert out[4].min() > 9.0, "and is followed within a few frames"


def test_one_euro_lag_on_fast_motion_is_small():
    # A point moving at 5 units a second: with scale 1 and beta 6 the lag tends to 1/(2 pi 6).
    f = OneEuroFilter(min_cutoff=1.0, beta=6.0)
    lag = [5.0 * i / 30 - f(np.array([5.0 * i / 30]), i / 30)[0] for i in range(90)]
    assert 0 < lag[-1] < 1.3 / (2 * np.pi * 6.0)


def test_one_euro_survives_repeated_timestamps():
    f = OneEuroFilter()
    f(np.zeros(2), 1.0)
    assert np.isfinite(f(np.ones(2), 1.0)).all()


# --- the jitter measure ------------------------------------------------------------------------------


EYE = 40 * float(np.linalg.norm(TEMPLATE_68[45] - TEMPLATE_68[36]))


def _face(shift: np.ndarray) -> np.ndarray:
    return (TEMPLATE_68 * 40 + 200 + shift).astype(np.float32)


def test_jitter_ignores_steady_motion_and_counts_shake():
    pan = [_face(np.array([3.0 * i, 1.0 * i])) for i in range(10)]
    assert landmark_jitter(pan) == pytest.approx(0.0, abs=1e-6)
    shake = [_face(np.array([2.0 * (i % 2), 0.0])) for i in range(10)]
    # Every triple has a 2nd difference of 4 px on every point.
    assert landmark_jitter(shake) == pytest.approx(4.0 / EYE, rel=1e-4)


def test_jitter_skips_triples_with_a_missing_face():
    frames = [_face(np.zeros(2)), _face(np.array([5.0, 0])), None, _face(np.zeros(2)), _face(np.zeros(2))]
    assert np.isnan(landmark_jitter(frames))
    frames.append(_face(np.array([0.0, 4.0])))
    assert landmark_jitter(frames) == pytest.approx(4.0 / EYE, rel=1e-4)


def test_jitter_leaves_out_a_jump_to_another_face():
    steady = [_face(np.array([0.0, 0.1 * (i % 2)])) for i in range(6)]
    elsewhere = [_face(np.array([300.0, 0.1 * (i % 2)])) for i in range(6)]
    assert landmark_jitter(steady + elsewhere) == pytest.approx(landmark_jitter(steady), rel=1e-6)
    assert landmark_jitter(steady + elsewhere, max_step=None) > 10 * landmark_jitter(steady)


# --- the tracker on the Hamilton clip ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(pipe, clip):
    """Per frame of the main shot (and a few past the cut): the visible tracks."""
    tracker = FaceTracker(pipe.analyser)
    # Tracks change in place from frame to frame: keep each frame's (id, face).
    return [[(tr.id, tr.face) for tr in tracker.update(frame, t)] for frame, t in clip[SHOT.start : CUT + 8]]


def test_one_person_keeps_one_id_through_the_shot(tracked):
    shot = tracked[: CUT - SHOT.start]
    ids = {i for tracks in shot for i, _ in tracks}
    assert len(ids) == 1
    seen = sum(bool(tracks) for tracks in shot)
    assert seen >= 0.95 * len(shot), "the face is followed through nearly every frame"


def test_the_track_ends_at_the_cut(tracked):
    singer = tracked[0][0][0]
    after = tracked[CUT - SHOT.start :]
    assert all(i != singer for tracks in after for i, _ in tracks)


def test_tracked_landmarks_stay_on_the_face_and_shake_less(pipe, clip, tracked):
    shot = tracked[: CUT - SHOT.start][:60]
    plain = analysed_landmarks(pipe.analyser, [frame for frame, _ in clip[SHOT][:60]])
    ours = [tracks[0][1].landmarks_68 if tracks else None for tracks in shot]
    errors = [
        np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(b[45] - b[36])
        for a, b in zip(ours, plain, strict=True)
        if a is not None and b is not None
    ]
    assert np.median(errors) < 0.05, "smoothing must not drag the points off a fast-moving face"
    pairs = zip(ours, plain, strict=True)
    both = [(a, b) if a is not None and b is not None else (None, None) for a, b in pairs]
    # Fast motion here, so most shake is real; tracking without smoothing comes out at about 1.05.
    assert landmark_jitter([a for a, _ in both]) < 0.9 * landmark_jitter([b for _, b in both])


def test_a_face_that_leaves_the_frame_is_dropped(pipe, images):
    # A still face slides out of the picture to the left, 12 px a frame.
    still = images("images/obama.jpg")
    h, w = still.shape[:2]
    tracker = FaceTracker(pipe.analyser)
    visible = []
    for i in range(60):
        m = np.float32([[1, 0, -12.0 * i], [0, 1, 0]])
        frame = cv2.warpAffine(still, m, (w, h), borderMode=cv2.BORDER_CONSTANT)
        visible.append(bool(tracker.update(frame, i / FPS)))
    assert visible[0] and visible[5]
    first_gone = visible.index(False)
    assert not any(visible[first_gone:]), "once gone it does not come back onto the background"
    assert not tracker.tracks


def test_tracker_is_deterministic_after_reset(pipe, clip):
    tracker = FaceTracker(pipe.analyser, TrackerSettings(detect_every=4))
    run = clip[SHOT.start : SHOT.start + 15]

    def points() -> list[np.ndarray]:
        return [tr.face.landmarks_68 for frame, t in run for tr in tracker.update(frame, t)]

    first = points()
    tracker.update(*clip[150])  # state left over from another part of the clip
    tracker.reset()
    second = points()
    assert len(first) == len(second) == len(run)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


# --- what the tracker skips, and what it never skips --------------------------------------------------


def _count_runs(monkeypatch, detector) -> list[tuple[tuple[int, ...], float]]:
    """Record the shape of every image the detector is run on, and the scale it is run at."""
    runs: list[tuple[tuple[int, ...], float]] = []
    run = detector.run

    def counted(image, scale, threshold=None):
        runs.append((image.shape, scale))
        return run(image, scale, threshold)

    monkeypatch.setattr(detector, "run", counted)
    return runs


def test_largest_only_needs_no_fine_pass_once_a_face_is_found(pipe, clip, monkeypatch):
    frame, t = clip[SHOT.start]
    regular, fine = TrackerSettings().scales(frame.shape)
    assert fine > regular
    for largest_only, fine_runs in ((False, 1), (True, 0)):
        runs = _count_runs(monkeypatch, pipe.analyser.detector)
        tracker = FaceTracker(pipe.analyser, TrackerSettings(largest_only=largest_only))
        assert tracker.update(frame, t), "the singer is found on the first frame either way"
        assert sum(scale == fine for _, scale in runs) == fine_runs
        monkeypatch.undo()


@pytest.mark.parametrize("contrast", [1.0, 0.15])
def test_an_unchanged_face_skips_checks_but_a_vanished_one_is_hidden_at_once(
    pipe, images, monkeypatch, contrast
):
    # Also in dim, flat footage, where a vanished face changes the picture by only a few grey levels.
    photo = images("images/obama.jpg").astype(np.float32)
    still = np.clip((photo - 60) * contrast + 40, 0, 255).astype(np.uint8)
    face = pipe.analyser.analyse(still, largest_only=True)[0]
    hidden = still.copy()
    x0, y0, x1, y1 = face.box.astype(int)
    # The face is gone: a flat patch of its own mean grey in its place.
    hidden[max(y0, 0) : y1, max(x0, 0) : x1] = int(still[max(y0, 0) : y1, max(x0, 0) : x1].mean())
    settings = TrackerSettings(detect_every=1000, fine_every=1000)
    tracker = FaceTracker(pipe.analyser, settings)
    tracker.update(still, 0.0)  # birth, by full detection
    runs = _count_runs(monkeypatch, pipe.analyser.detector)
    visible = [bool(tracker.update(still, i / FPS)) for i in range(1, 10)]
    checks = len(runs)
    assert all(visible)
    assert 9 / (settings.same_skips + 1) <= checks < 9, "checks skipped, never more than same_skips in a row"
    assert not tracker.update(hidden, 10 / FPS), "the crop changed: the check runs and fails on this frame"
