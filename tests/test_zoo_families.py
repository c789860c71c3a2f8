"""Contract tests of the learned model families: tiny ONNX models with the real names, shapes and dtypes
and a known behaviour, run through the real pre- and post-processing on real photos."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import onnx
import pytest
import zoo_onnx as z
from onnx import numpy_helper

from facefuse.analysis import FaceAnalyser
from facefuse.analysis.arcface import ArcFaceRecogniser, embedding_crop
from facefuse.analysis.fan68 import Fan68Landmarker
from facefuse.analysis.scrfd import ScrfdDetector
from facefuse.analysis.yunet import YuNetDetector
from facefuse.enhance import FaceEnhancer
from facefuse.errors import ModelCorrupt, ModelHashMismatch, ModelMissing
from facefuse.geometry import TEMPLATES, similarity, template_matrix, transform_points
from facefuse.masks.bisenet import BiSeNetParser
from facefuse.masks.box import box_mask
from facefuse.masks.combine import MaskSet
from facefuse.masks.xseg import XSegOccluder
from facefuse.models import ModelSpec, ModelStore, Registry, SessionPool
from facefuse.models.onnx_io import last_initializer
from facefuse.swap.base import SourceFace
from facefuse.swap.inswapper import InswapperSwapper, OnnxInswapper
from facefuse.swap.pixel_boost import boosted, explode, implode
from facefuse.swap.simswap import EmbeddingConverter, SimSwapSwapper

RNG = np.random.default_rng(7)
EMAP = RNG.normal(size=(512, 512)).astype(np.float32)
ARC_W = RNG.normal(size=(3, 512)).astype(np.float32)


@pytest.fixture(scope="module")
def arcface():
    return ArcFaceRecogniser(z.session(z.arcface(ARC_W)))


@pytest.fixture(scope="module")
def photo(pipe, images):
    """A real photo and its largest face from the built-in stack."""
    img = images("images/kit_harington1.jpg")
    return img, pipe.analyser.analyse(img, largest_only=True)[0]


def _face_box_mask(shape, face, shrink=0.15):
    """Inside the face: the detector box shrunk a little (the box mask fades only near the crop edge)."""
    x0, y0, x1, y1 = face.box
    dx, dy = shrink * (x1 - x0), shrink * (y1 - y0)
    m = np.zeros(shape[:2], bool)
    m[int(y0 + dy) : int(y1 - dy), int(x0 + dx) : int(x1 - dx)] = True
    return m


def _footprint(shape, five, template, size):
    """Frame pixels an aligned crop can touch (everything else must stay bit-identical)."""
    inv = cv2.invertAffineTransform(template_matrix(five, template, size))
    ones = np.full((size, size), 255, np.uint8)
    return cv2.warpAffine(ones, inv, (shape[1], shape[0])) > 0


# -- alignment ---------------------------------------------------------------------------------------------


def test_templates_are_the_published_pixels():
    assert np.allclose(TEMPLATES["arcface_128"] * 128, [[46.2946, 51.6963], [81.5318, 51.5014],
                       [64.0252, 71.7366], [49.5493, 92.3655], [78.7299, 92.2041]], atol=1e-3)  # fmt: skip
    assert np.allclose(TEMPLATES["ffhq_512"][0] * 512, [192.9814, 239.9471], atol=1e-3)
    # A face that is an exact similarity image of the template lands on it exactly.
    rot = similarity(np.array([[0, 0], [1, 0]], np.float32), np.array([[300, 200], [330, 215]], np.float32))
    five = transform_points(TEMPLATES["arcface_128"] * 128, rot)
    m = template_matrix(five, "arcface_128", 128)
    assert np.allclose(transform_points(five, m), TEMPLATES["arcface_128"] * 128, atol=1e-3)


# -- detectors ---------------------------------------------------------------------------------------------


def _planted(boxes_kps):
    """SCRFD faces at given input-space boxes, each on the stride-16 anchor nearest its centre."""
    faces = []
    for box, kps in boxes_kps:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        faces.append(dict(stride=16, row=int(cy // 16), col=int(cx // 16), score=0.9, box=box, kps=kps))
    return faces


def _kps_in(box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return np.array([[x0 + 0.3 * w, y0 + 0.4 * h], [x0 + 0.7 * w, y0 + 0.4 * h], [x0 + 0.5 * w, y0 + 0.6 * h],
                     [x0 + 0.35 * w, y0 + 0.8 * h], [x0 + 0.65 * w, y0 + 0.8 * h]], np.float32)  # fmt: skip


@pytest.mark.parametrize("input_name", ["input.1", "input"])
def test_scrfd_finds_planted_faces_at_their_boxes(input_name):
    a, b = (100.0, 120.0, 220.0, 260.0), (400.0, 60.0, 470.0, 150.0)
    faces = _planted([(a, _kps_in(a)), (b, _kps_in(b))])
    # A weaker duplicate of face a on the next anchor (NMS removes it) and a face under the threshold.
    faces.append(dict(faces[0], anchor=1, score=0.7, box=(102.0, 121.0, 222.0, 262.0)))
    faces.append(
        dict(stride=32, row=15, col=15, score=0.3, box=(460.0, 460.0, 520.0, 530.0), kps=np.zeros((5, 2)))
    )
    det = ScrfdDetector(z.session(z.scrfd(faces, input_name=input_name)))
    # A 1280 x 720 frame is letterboxed at scale 0.5: input pixels are frame pixels / 2.
    found = det.detect(np.zeros((720, 1280, 3), np.uint8))
    assert len(found) == 2
    got = sorted(found, key=lambda d: d.box[0])
    for d, (box, _) in zip(got, [(a, 0), (b, 0)], strict=True):
        assert np.allclose(d.box, np.array(box) * 2, atol=1e-3)
        assert np.allclose(d.landmarks_5, _kps_in(box) * 2, atol=1e-3)
        assert d.score == pytest.approx(0.9)
    assert len(det.detect(np.zeros((720, 1280, 3), np.uint8), largest_only=True)) == 1


def test_yunet_finds_planted_faces_at_their_boxes():
    box = (200.0, 100.0, 300.0, 230.0)
    faces = [dict(stride=32, row=5, col=7, cls=0.81, obj=1.0, box=box, kps=_kps_in(box)),
             dict(stride=8, row=50, col=50, cls=0.1, obj=0.5, box=(400.0, 400.0, 410.0, 412.0),
                  kps=np.zeros((5, 2)))]  # fmt: skip
    det = YuNetDetector(z.session(z.yunet(faces)))
    found = det.detect(np.zeros((360, 480, 3), np.uint8))  # fits 640 x 640 at scale 4/3
    assert len(found) == 1
    assert found[0].score == pytest.approx(0.9, abs=1e-5)  # sqrt(cls * obj)
    assert np.allclose(found[0].box, np.array(box) * 0.75, atol=1e-3)
    assert np.allclose(found[0].landmarks_5, _kps_in(box) * 0.75, atol=1e-3)


def test_analyser_with_a_learned_detector_uses_its_boxes_and_keypoints(photo):
    img, face = photo
    h, w = img.shape[:2]
    scale = int(640 * h / w) / h  # the letterbox's own scale (InsightFace rounds the new height down)
    box = face.box * scale
    det = ScrfdDetector(
        z.session(z.scrfd(_planted([(tuple(box), face.landmarks_5 * scale)]))), name="scrfd_10g"
    )
    analyser = FaceAnalyser(det)
    (found,) = analyser.analyse(img)
    assert np.allclose(found.box, face.box, atol=0.05)
    assert np.allclose(found.landmarks_5, face.landmarks_5, atol=0.05)  # dlib has no score: keypoints align
    # dlib's 68 points, fitted from a box placed by the keypoints, agree with the built-in stack's.
    err = np.linalg.norm(found.landmarks_68 - face.landmarks_68, axis=1).mean() / face.eye_distance
    assert err < 0.05


# -- landmarks, recogniser ---------------------------------------------------------------------------------


def test_2dfan4_points_map_back_through_the_box_crop(photo):
    img, face = photo
    pts64 = RNG.uniform(8, 56, size=(68, 2)).astype(np.float32)
    lm = Fan68Landmarker(z.session(z.fan68(pts64, peak=0.9)))
    box = np.array([100.0, 50.0, 300.0, 290.0], np.float32)  # 200 x 240: longer side -> 195 px
    points, score = lm.fit(img, box)
    s = 195 / 240
    expected = (pts64 * 4 - (256 - np.array([400.0, 340.0]) * s) / 2) / s
    assert np.allclose(points, expected, atol=1e-3)
    assert score == pytest.approx(1.0)
    # A confident fit supplies the 5 alignment points; a weak one leaves the detector's keypoints.
    weak = Fan68Landmarker(z.session(z.fan68(pts64, peak=0.3)))
    assert weak.fit(img, box)[1] == pytest.approx(1 / 3, abs=1e-3)
    kps = face.landmarks_5 + 3.0
    det = ScrfdDetector(z.session(z.scrfd([])))
    from facefuse.analysis.detect import Detection

    d = Detection(box=face.box, score=0.9, landmarks_5=kps)
    assert np.allclose(FaceAnalyser(det, landmarker=weak).face_at(img, d).landmarks_5, kps)
    strong = FaceAnalyser(det, landmarker=lm).face_at(img, d)
    assert not np.allclose(strong.landmarks_5, kps)


def test_arcface_preprocessing_and_unit_descriptor(photo, arcface):
    img, face = photo
    desc = arcface.describe(img, face)
    crop = embedding_crop(img, face.landmarks_5)
    # RGB order, (x - 127.5) / 127.5; the channel means go through the model's projection.
    means = ((crop.astype(np.float64) - 127.5) / 127.5).reshape(-1, 3).mean(0)
    e = means @ ARC_W
    assert np.linalg.norm(desc) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(desc, e / np.linalg.norm(e), atol=2e-3)
    assert ArcFaceRecogniser.same_person == pytest.approx(np.sqrt(2 - 2 * 0.4), abs=0.01)


# -- swappers ----------------------------------------------------------------------------------------------


def test_emap_latent_is_insightfaces_formula(tmp_path, photo, arcface):
    img, face = photo
    path = z.save(z.inswapper(EMAP), tmp_path / "inswapper_128.onnx")
    emap = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[-1])
    assert np.array_equal(last_initializer(path), emap)
    sw = InswapperSwapper(OnnxInswapper(z.session(z.inswapper(EMAP))), last_initializer(path), arcface)
    e = arcface.raw(img, face.landmarks_5).astype(np.float64)
    ref = (e / np.linalg.norm(e)) @ emap.astype(np.float64)
    ref /= np.linalg.norm(ref)
    assert np.allclose(sw.prepare(img, face).latent, ref, atol=1e-5)
    # fp16 file: its float16 emap is read as float32.
    path16 = z.save(z.inswapper(EMAP, fp16=True), tmp_path / "inswapper_128_fp16.onnx")
    assert last_initializer(path16).dtype == np.float32
    assert np.allclose(last_initializer(path16), EMAP, atol=1e-2 * np.abs(EMAP).max())


def test_inswapper_net_feeds_target_and_latent(arcface):
    net = OnnxInswapper(z.session(z.inswapper(EMAP, probe=True)))
    latent = np.zeros((2, 512), np.float32)
    latent[0, :3], latent[1, :3] = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = net.run(np.zeros((2, 3, 128, 128), np.float32), latent)
    assert out.shape == (2, 3, 128, 128)
    assert np.allclose(out[:, :, 64, 64], latent[:, :3])


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("boost", [128, 256])
def test_identity_inswapper_reproduces_the_frame(photo, arcface, fp16, boost):
    img, face = photo
    sw = InswapperSwapper(
        OnnxInswapper(z.session(z.inswapper(EMAP, fp16=fp16))), EMAP, arcface, pixel_boost=boost
    )
    out = sw.swap(img, face, sw.prepare(img, face))
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
    assert diff[_face_box_mask(img.shape, face)].max() <= 2
    assert np.array_equal(out[~_footprint(img.shape, face.landmarks_5, "arcface_128", boost)],
                          img[~_footprint(img.shape, face.landmarks_5, "arcface_128", boost)])  # fmt: skip


def test_identity_inswapper_pasting_its_output_at_a_resolution_that_holds_the_face(photo, arcface):
    """Without keep_detail the crop itself goes back: exact to resampling where the crop holds the face."""
    img, face = photo
    sw = InswapperSwapper(
        OnnxInswapper(z.session(z.inswapper(EMAP))), EMAP, arcface, pixel_boost=512, keep_detail=False
    )
    out = sw.swap(img, face, sw.prepare(img, face))
    inside = _face_box_mask(img.shape, face)
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)[inside]
    assert np.percentile(diff, 99.9) <= 2 and diff.mean() < 0.3


def test_swapped_colour_lands_on_the_face(photo, arcface):
    """A swapper whose output is a flat colour (from the latent): it covers the face, centred on it."""
    img, face = photo
    sw = InswapperSwapper(
        OnnxInswapper(z.session(z.inswapper(EMAP, probe=True))), EMAP, arcface, keep_detail=False
    )
    latent = np.zeros(512, np.float32)
    latent[:3] = (0.8, 0.2, 0.5)
    src = SourceFace(face=face, image=img, origin=np.zeros(2, np.float32), latent=latent)
    out = sw.swap(img, face, src)
    want = np.array([204, 51, 128])
    for x, y in face.landmarks_5.round().astype(int):
        assert np.abs(out[y, x].astype(int) - want).max() <= 1
    painted = np.abs(out.astype(int) - want).max(axis=2) <= 1
    ys, xs = np.nonzero(painted)
    centre = np.array([xs.mean(), ys.mean()])
    crop_centre = transform_points(
        np.array([[64, 64]], np.float32),
        cv2.invertAffineTransform(template_matrix(face.landmarks_5, "arcface_128", 128)),
    )
    assert np.linalg.norm(centre - crop_centre[0]) < 0.05 * face.width  # fmt: skip


def test_pixel_boost_is_polyphase():
    crop = RNG.integers(0, 255, size=(512, 512, 3), dtype=np.uint8)
    subs = explode(crop, 4)
    assert subs.shape == (16, 128, 128, 3)
    assert np.array_equal(subs[1 * 4 + 3], crop[1::4, 3::4])
    assert np.array_equal(implode(subs, 4), crop)
    calls = []

    def run(sub):
        calls.append(sub.shape)
        return sub

    assert np.array_equal(boosted(run, crop, 128), crop)
    assert calls == [(128, 128, 3)] * 16


def test_simswap_latent_and_identity_swap(photo, arcface):
    img, face = photo
    m = RNG.normal(size=(512, 512)).astype(np.float32)
    conv = EmbeddingConverter(z.session(z.converter(m)))
    sw = SimSwapSwapper(z.session(z.simswap()), conv, arcface)
    src = sw.prepare(img, face)
    ref = arcface.raw(img, face.landmarks_5).astype(np.float64) @ m
    assert np.allclose(src.latent, ref / np.linalg.norm(ref), atol=1e-4)
    out = sw.swap(img, face, src)
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
    assert diff[_face_box_mask(img.shape, face)].max() <= 2
    outside = ~_footprint(img.shape, face.landmarks_5, "arcface_112_v1", 256)
    assert np.array_equal(out[outside], img[outside])


# -- enhancers ---------------------------------------------------------------------------------------------


def test_identity_enhancers_keep_the_face(photo):
    img, face = photo
    inside = _face_box_mask(img.shape, face)
    for enh in (FaceEnhancer(z.session(z.restorer()), "gfpgan", blend=1.0),
                FaceEnhancer(z.session(z.restorer(codeformer=True)), "codeformer", blend=1.0, fidelity=1.0),
                FaceEnhancer(z.session(z.restorer(256)), "gpen", blend=1.0)):  # fmt: skip
        out = enh.enhance(img, face)
        outside = ~_footprint(img.shape, face.landmarks_5, "ffhq_512", enh.size)
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
        limit = 2 if enh.size == 512 else 40  # a 256 crop of a 135 px face cannot hold all of it
        assert np.percentile(diff[inside], 99) <= limit, enh.name
        assert np.array_equal(out[outside], img[outside]), enh.name
    assert FaceEnhancer(z.session(z.restorer(256)), "gpen").size == 256


def test_codeformer_fidelity_and_blend_amount(photo):
    img, face = photo
    nose = tuple(face.landmarks_5[2].round().astype(int))[::-1]
    black = FaceEnhancer(z.session(z.restorer(codeformer=True)), "codeformer", blend=1.0, fidelity=0.0)
    assert black.enhance(img, face)[nose].max() <= 1  # w = 0 reaches the model: its face is black
    half = FaceEnhancer(z.session(z.restorer(codeformer=True)), "codeformer", blend=0.5, fidelity=0.0)
    assert np.allclose(half.enhance(img, face)[nose].astype(int), img[nose].astype(int) / 2, atol=2)
    assert np.array_equal(FaceEnhancer(z.session(z.restorer()), "gfpgan", blend=0.0).enhance(img, face), img)
    with pytest.raises(ModelCorrupt, match="weight"):
        FaceEnhancer(z.session(z.restorer()), "codeformer")  # CodeFormer without its weight input


# -- masks -------------------------------------------------------------------------------------------------


def test_box_mask_numbers():
    m = box_mask(128)
    assert m.shape == (128, 128) and m[64, 64] == pytest.approx(1.0, abs=1e-3)
    # A 9 px zero border at 128, then a Gaussian of sigma 4.75 over it: ~0 at the edge, rising inwards.
    assert m[0, 64] < 0.1 and m[0, 0] < 0.01 and m[64, -1] < 0.1
    assert m[0, 64] < m[8, 64] < m[16, 64] < m[30, 64]
    assert np.allclose(m, m.T) and np.allclose(m, m[::-1])


def test_xseg_reads_bgr_nhwc_and_regions_are_chosen():
    crop = np.zeros((200, 200, 3), np.uint8)
    crop[:100, :, 2] = 255  # blue top half (RGB)
    occ = XSegOccluder(z.session(z.xseg(channel=0)))  # the model returns its first (B of BGR) channel
    m = occ(crop)
    assert m.shape == (200, 200) and m[20, 100] > 0.99 and m[180, 100] < 0.01
    # Parser: red -> skin (1), green -> hair (17), blue -> nose (10).
    crop = np.zeros((200, 200, 3), np.uint8)
    crop[:, :70, 0] = 255
    crop[:, 70:140, 1] = 255
    crop[:, 140:, 2] = 255
    model = z.bisenet({0: 1, 1: 17, 2: 10})
    skin = BiSeNetParser(z.session(model), ["skin"])(crop)
    nose = BiSeNetParser(z.session(model), ["nose"])(crop)
    both = BiSeNetParser(z.session(model), ["skin", "nose"])(crop)
    assert skin[100, 20] > 0.99 and skin[100, 180] < 0.01 and skin[100, 105] < 0.01
    assert nose[100, 180] > 0.99 and nose[100, 20] < 0.01
    assert both[100, 20] > 0.99 and both[100, 180] > 0.99 and both[100, 105] < 0.01  # hair never
    with pytest.raises(ValueError, match="hair"):
        BiSeNetParser(z.session(model), ["hair"])
    # Combined: a pixel shows the new face only where every mask allows it.
    ms = MaskSet(box=True, occluders=[lambda c: np.full(c.shape[:2], 0.5, np.float32)])
    combined = ms.combine(ms.before(np.zeros((128, 128, 3), np.uint8)), 128)
    assert combined[64, 64] == pytest.approx(0.5) and combined[0, 0] < 0.01


# -- refusing bad models -----------------------------------------------------------------------------------


def test_wrong_contract_is_refused_with_what_was_expected():
    with pytest.raises(ModelCorrupt, match=r"expected target \[\?,3,128,128\]"):
        OnnxInswapper(z.session(z.restorer()))
    with pytest.raises(ModelCorrupt, match="output"):
        ScrfdDetector(z.session(z.fan68(np.zeros((68, 2)))))


def _registry(tmp_path, good: bytes):
    spec = dict(purpose="swapper", family="inswapper", url="https://example.invalid/x.onnx", licence="test")
    digest = hashlib.sha256(good).hexdigest()
    return Registry(
        [
            ModelSpec(
                name="inswapper_128", filename="inswapper_128.onnx", sha256=digest, size=len(good), **spec
            )
        ]
    )


def test_truncated_corrupt_and_tampered_files_are_rejected(tmp_path):
    good = z.inswapper(EMAP).SerializeToString()
    folder = tmp_path / "models"
    folder.mkdir()
    reg = _registry(tmp_path, good)
    path = folder / "inswapper_128.onnx"
    with pytest.raises(ModelMissing, match="facefuse models download inswapper_128"):
        SessionPool(ModelStore(reg, folder)).get("inswapper_128")
    path.write_bytes(good)
    assert SessionPool(ModelStore(reg, folder)).get("inswapper_128").get_inputs()[0].name == "target"
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises((ModelCorrupt, ModelHashMismatch)):
        SessionPool(ModelStore(reg, folder)).get("inswapper_128")
    with pytest.raises(ModelCorrupt):  # unchecked, it still has to load as ONNX
        SessionPool(ModelStore(reg, folder, verify=False)).get("inswapper_128")
    with pytest.raises(ModelCorrupt, match="not a readable ONNX"):
        last_initializer(path)
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(tampered))
    with pytest.raises(ModelHashMismatch):
        SessionPool(ModelStore(reg, folder)).get("inswapper_128")
