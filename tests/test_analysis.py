import cv2
import numpy as np
import pytest

from facefuse.analysis import DetectorSettings, FaceAnalyser


def test_finds_every_small_face_in_a_group_photo(pipe, images):
    faces = pipe.analyser.analyse(images("groups/pascal_2008_002470.jpg"))
    assert len(faces) == 6
    assert min(f.width for f in faces) < 60  # these are the small faces a single coarse pass misses


def test_finds_no_face_among_dogs(pipe, images):
    assert pipe.analyser.analyse(images("groups/dogs_no_faces.jpg")) == []


def test_largest_only_stops_at_the_coarse_pass_but_finds_the_same_largest_face(pipe, images):
    img = images("groups/obama_and_biden.jpg")
    every = pipe.analyser.analyse(img)
    largest = pipe.analyser.analyse(img, largest_only=True)
    assert len(every) == 3 and len(largest) == 1
    np.testing.assert_allclose(largest[0].centre, every[0].centre, atol=0.2 * every[0].width)


def test_coarse_to_fine_scales_reach_the_minimum_face():
    analyser_scales = FaceAnalyser(DetectorSettings(min_face=40, coarse_size=640)).detector.scales
    levels = analyser_scales((720, 1280, 3))
    assert levels[0] == 0.5 and abs(levels[-1] - 2000 / 1280) < 1e-6  # capped at max_size
    assert analyser_scales((300, 400, 3))[-1] == 2.0  # 80 px window / 40 px faces
    assert analyser_scales((4000, 6000, 3))[-1] * 6000 <= 2000 + 1  # never past max_size


def test_face_carries_everything(pipe, images):
    face = pipe.analyser.analyse(images("images/obama.jpg"), largest_only=True, descriptors=True)[0]
    assert face.landmarks_68.shape == (68, 2) and face.landmarks_5.shape == (5, 2)
    assert face.descriptor.shape == (128,)
    assert face.score > 0
    # The 68 points lie in the box (give or take the chin) and the five points are eyes, nose, mouth.
    x0, _, x1, _ = face.box
    inside = (face.landmarks_68[:, 0] > x0 - 20) & (face.landmarks_68[:, 0] < x1 + 20)
    assert inside.all()
    eyes_y = face.landmarks_5[:2, 1].mean()
    assert eyes_y < face.landmarks_5[2, 1] < face.landmarks_5[3:, 1].mean()


def test_descriptors_tell_people_apart(pipe, images):
    def desc(name):
        return pipe.analyser.analyse(images(name), largest_only=True, descriptors=True)[0].descriptor

    obama, obama2, biden = desc("images/obama.jpg"), desc("images/obama2.jpg"), desc("images/biden.jpg")
    assert np.linalg.norm(obama - obama2) < 0.5 < np.linalg.norm(obama - biden)


def test_pose_sees_a_turned_head(pipe, images):
    frontal = pipe.analyser.analyse(images("images/obama.jpg"), largest_only=True)[0].pose
    turned = pipe.analyser.analyse(images("images/kit_harington2.jpg"), largest_only=True)[0].pose
    assert abs(frontal.yaw) < 10 < 25 < abs(turned.yaw)
    assert frontal.frontality > turned.frontality


def test_roll_follows_an_in_plane_rotation(pipe, images):
    img = images("images/obama.jpg")
    h, w = img.shape[:2]
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), -15, 1.0), (w, h))
    base = pipe.analyser.analyse(img, largest_only=True)[0].pose.roll
    rolled = pipe.analyser.analyse(rot, largest_only=True)[0].pose.roll
    assert 10 < rolled - base < 20


def test_sharpness_drops_when_the_face_is_blurred(pipe, images):
    img = images("images/obama.jpg")
    sharp = pipe.analyser.analyse(img, largest_only=True)[0]
    blurred = pipe.analyser.analyse(cv2.GaussianBlur(img, (0, 0), 3), largest_only=True)[0]
    assert blurred.sharpness < 0.6 * sharp.sharpness
    assert blurred.quality < sharp.quality


def test_the_detector_is_saved_once_then_loaded_and_finds_the_same_faces(tmp_path, monkeypatch, images):
    """Building dlib's detector took 0.23 s of every CLI start; after the first run a saved copy in
    the user's cache loads instead (dlib's builder is not called again), and finds the same boxes."""
    import dlib

    from facefuse.analysis import detect

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    img = np.ascontiguousarray(images("groups/pascal_2008_002470.jpg"))
    built = detect.frontal_detector()
    saved = list((tmp_path / "facefuse" / "detectors").glob("*.svm"))
    assert len(saved) == 1 and saved[0].stat().st_size > 100_000

    def refuse():
        raise AssertionError("the detector was built again instead of loaded")

    monkeypatch.setattr(dlib, "get_frontal_face_detector", refuse)
    loaded = detect.frontal_detector()
    a, b = built.run(img, 1, 0.0), loaded.run(img, 1, 0.0)
    assert len(a[0]) == 6 and [str(r) for r in a[0]] == [str(r) for r in b[0]] and a[1] == b[1]


def _cut_short(data: bytes) -> bytes:  # as by a full disk
    return data[:5000]


def _wild_length(data: bytes) -> bytes:  # a length field gone wrong: dlib's loader raises ValueError
    return data[:50] + bytes.fromhex("08ffffffffffffff0f") + data[59:]


@pytest.mark.parametrize("damage", [_cut_short, _wild_length])
def test_a_damaged_saved_detector_is_rebuilt(tmp_path, monkeypatch, images, damage):
    from facefuse.analysis import detect

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    detect.frontal_detector()
    (saved,) = (tmp_path / "facefuse" / "detectors").glob("*.svm")
    saved.write_bytes(damage(saved.read_bytes()))
    img = np.ascontiguousarray(images("images/obama.jpg"))
    assert len(detect.frontal_detector()(img)) == 1
    assert saved.stat().st_size > 100_000  # and saved whole again


def _no_home(name):
    raise RuntimeError("Could not determine home directory.")


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(("target", "fail"), [("private_dir", _no_home), ("tempfile.mkstemp", _disk_full)])
def test_a_cache_that_cannot_be_used_only_costs_time(tmp_path, monkeypatch, images, target, fail):
    """No home folder (a bare container) or a full disk: the detector is built as before, no error."""
    from facefuse.analysis import detect

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(f"facefuse.analysis.detect.{target}", fail)
    img = np.ascontiguousarray(images("images/obama.jpg"))
    assert len(detect.frontal_detector()(img)) == 1
    assert not list(tmp_path.rglob("*.svm")) and not list(tmp_path.rglob("*.tmp"))
