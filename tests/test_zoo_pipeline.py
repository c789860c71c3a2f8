"""Learned models chosen by name, through the Pipeline API and the CLI, mixed with the built-in stack."""

from __future__ import annotations

import numpy as np
import pytest
import zoo_onnx as z
from cli_helpers import assert_one_line_error, run_cli
from conftest import media

from facefuse.errors import ExitCode
from facefuse.media import read_image
from facefuse.models import ModelStore, SessionPool, default_registry
from facefuse.pipeline import Pipeline
from facefuse.zoo import ModelChoice

RNG = np.random.default_rng(11)
EMAP = RNG.normal(size=(512, 512)).astype(np.float32)
TARGET = "images/kit_harington1.jpg"
SOURCE = "images/obama.jpg"


@pytest.fixture(scope="module")
def models(tmp_path_factory, pipe, images):
    """Tiny stand-ins for the registry's models, saved as files; the detector plants the real face."""
    folder = tmp_path_factory.mktemp("models")
    img = images(TARGET)
    face = pipe.analyser.analyse(img, largest_only=True)[0]
    h, w = img.shape[:2]
    scale = int(640 * h / w) / h
    box, kps = face.box * scale, face.landmarks_5 * scale
    cx, cy = (box[:2] + box[2:]) / 2
    planted = [dict(stride=16, row=int(cy // 16), col=int(cx // 16), score=0.9, box=tuple(box), kps=kps)]
    files = {
        "inswapper_128": z.inswapper(EMAP),
        "arcface_w600k_r50": z.arcface(RNG.normal(size=(3, 512))),
        "scrfd_10g": z.scrfd(planted),
        "gfpgan_1.4": z.restorer(),
        "simswap_256": z.simswap(),
        "arcface_converter_simswap": z.converter(),
        "xseg_1": z.xseg(channel=0),
    }
    return {name: z.save(model, folder / f"{name}.onnx") for name, model in files.items()}, face


def _pool(paths) -> SessionPool:
    return SessionPool(
        ModelStore(default_registry(), paths[next(iter(paths))].parent, overrides=paths, verify=False)
    )


def _check_identity(out, img, face):
    x0, y0, x1, y1 = face.box
    dx, dy = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    inner = (slice(int(y0 + dy), int(y1 - dy)), slice(int(x0 + dx), int(x1 - dx)))
    diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
    assert diff[inner].max() <= 2
    return diff


def test_pipeline_mixes_learned_models_with_the_builtin_stack(models, images):
    paths, face = models
    img = images(TARGET)
    choice = ModelChoice(
        detector="scrfd_10g", recogniser="arcface_w600k_r50", swapper="inswapper_128", enhancer="gfpgan_1.4",
        enhancer_blend=1.0,
    )  # fmt: skip
    pipe = Pipeline(models=choice, pool=_pool(paths))
    assert pipe.analyser.detector.name == "scrfd_10g" and pipe.analyser.landmarks.name == "dlib"
    assert pipe.analyser.same_person == pytest.approx(1.10)
    result = pipe.run(pipe.source(img), img)
    assert result.faces_swapped == 1
    assert np.allclose(result.swapped[0].box, face.box, atol=0.05)
    x0, y0, x1, y1 = face.box.astype(int)
    diff = np.abs(result.image.astype(int) - img.astype(int)).max(axis=2)[y0:y1, x0:x1]
    assert np.percentile(diff, 99) <= 2  # identity swap, then an identity restorer at 512
    # Sessions are opened once per model and shared (the swapper reuses the recogniser's ArcFace).
    assert pipe.pool.created == 4


def test_pipeline_simswap_with_occlusion_mask(models, images):
    paths, face = models
    img = images(TARGET)
    pipe = Pipeline(models=ModelChoice(swapper="simswap_256", masks=("box", "occlusion")), pool=_pool(paths))
    assert pipe.analyser.detector.name == "hog"  # the built-in detector with a learned swapper
    result = pipe.run(pipe.source(img), img)
    _check_identity(result.image, img, face)


def test_cli_identity_inswapper_reproduces_the_photo(models, images, tmp_path):
    paths, face = models
    out = tmp_path / "out.png"
    proc = run_cli(
        tmp_path / "config", "swap", "-s", media(SOURCE), "-t", media(TARGET), "-o", out,
        "--swapper", "inswapper_128", "--no-verify", "--models-dir", tmp_path / "empty",
        "--model", f"inswapper_128={paths['inswapper_128']}",
        "--model", f"arcface_w600k_r50={paths['arcface_w600k_r50']}", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    img, got = images(TARGET), read_image(out)
    diff = _check_identity(got, img, face)
    # Bit-identical outside the crop's footprint (the arcface_128 crop with its 1 px margin).
    from facefuse.geometry import template_matrix, transform_points

    inv = template_matrix(face.landmarks_5, "arcface_128", 128)
    corners = transform_points(np.array([[0, 0], [128, 0], [0, 128], [128, 128]], np.float32), _inv(inv))
    (x0, y0), (x1, y1) = np.floor(corners.min(0)).astype(int) - 1, np.ceil(corners.max(0)).astype(int) + 1
    outside = np.ones(diff.shape, bool)
    outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
    assert diff[outside].max() == 0
    assert '"swapper": "inswapper_128"' in proc.stdout


def _inv(m):
    import cv2

    return cv2.invertAffineTransform(m)


def test_cli_missing_model_is_one_line_exit_20(models, tmp_path):
    paths, _ = models
    proc = run_cli(
        tmp_path / "config", "swap", "-s", media(SOURCE), "-t", media(TARGET), "-o", tmp_path / "out.png",
        "--swapper", "inswapper_128", "--models-dir", tmp_path / "empty", "--no-verify",
        "--model", f"arcface_w600k_r50={paths['arcface_w600k_r50']}",
    )  # fmt: skip
    line = assert_one_line_error(proc, ExitCode.MODEL_MISSING, "inswapper_128")
    assert "facefuse models download" in line
    assert not (tmp_path / "out.png").exists()


def test_cli_refuses_unknown_mask_and_region(tmp_path):
    for flags, word in ((["--mask", "box,lips"], "lips"), (["--mask-regions", "skin,hair"], "hair")):
        proc = run_cli(
            tmp_path / "config",
            "swap",
            "-s",
            media(SOURCE),
            "-t",
            media(TARGET),
            "-o",
            tmp_path / "o.png",
            *flags,
        )
        assert_one_line_error(proc, ExitCode.USAGE, word)
