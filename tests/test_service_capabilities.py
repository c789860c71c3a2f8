"""GET /v1/capabilities and learned model choices in service jobs: offered only where their files are
installed, refused (422) otherwise, and run by the workers (tiny stand-in ONNX models, hashes off)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zoo_onnx as z
from fastapi.testclient import TestClient
from service_helpers import assert_error, image_files, upload, wait_for

from facefuse.masks.bisenet import REGIONS
from facefuse.media.video import available_encoders
from facefuse.models import default_registry
from facefuse.service.app import Settings, create_app
from facefuse.service.options import DETECTORS, ENHANCERS, MASKS, SWAPPERS
from facefuse.zoo import DETECTORS as ZOO_DETECTORS
from facefuse.zoo import ENHANCERS as ZOO_ENHANCERS
from facefuse.zoo import SWAPPERS as ZOO_SWAPPERS

RNG = np.random.default_rng(5)


def names(choices: list[dict]) -> list[str]:
    return [c["name"] for c in choices]


def install(folder, models: dict) -> None:
    """Save stand-ins under the registry's file names, as `facefuse models download` would."""
    registry = default_registry()
    for name, model in models.items():
        z.save(model, folder / registry.get(name).filename)


def client_for(tmp_path, models_dir, **settings) -> TestClient:
    data = tmp_path / "data"
    base = {"rate_limit_per_minute": 0, "max_active_jobs": 0, "workers": 1, "verify_models": False}
    app = create_app(Settings(data_dir=data, models_dir=models_dir, **{**base, **settings}))
    return TestClient(app, base_url="http://127.0.0.1")


def test_option_names_are_the_zoos():
    assert set(SWAPPERS) == set(ZOO_SWAPPERS)
    assert set(ENHANCERS) == {"none", *ZOO_ENHANCERS}
    assert set(DETECTORS) == set(ZOO_DETECTORS)
    assert set(MASKS) == {"mesh", "box", "occlusion", "region"}


def test_without_models_only_the_builtin_stack_is_offered(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    with client_for(tmp_path, empty, max_upload_bytes=5_000_000, max_pixels=9_000_000) as client:
        caps = client.get("/v1/capabilities").json()
        assert names(caps["swappers"]) == ["mesh"] and caps["swappers"][0]["learned"] is False
        assert names(caps["enhancers"]) == ["none"]
        assert names(caps["masks"]) == ["mesh", "box"] and caps["mask_regions"] == []
        assert names(caps["detectors"]) == ["hog"]
        assert names(caps["encoders"]) == available_encoders() and "h264" in caps["presets"]
        assert caps["output_formats"] == ["png", "jpg", "webp", "mp4"]
        assert caps["defaults"]["swapper"] == "mesh" and caps["defaults"]["encoder"] == "h264"
        assert caps["limits"]["max_upload_bytes"] == 5_000_000 and caps["limits"]["max_pixels"] == 9_000_000
        assert caps["limits"]["max_sync_pixels"] == 4_000_000 and caps["limits"]["max_sources"] == 10
        assert "/v1/capabilities" in client.get("/openapi.json").json()["paths"]
        # A known model that is not installed: refused before anything is stored.
        for options in ({"swapper": "inswapper_128"}, {"enhancer": "gfpgan_1.4"}, {"detector": "yunet"}):
            body = assert_error(
                client.post("/v1/jobs", files=image_files(), data={"options": json.dumps(options)}),
                422,
                "invalid_options",
            )
            assert "not available on this server" in body["error"]["message"]
        assert not list((tmp_path / "data" / "files").rglob("*.jpg"))
        # Unknown names are refused by the schema; masks other than the swapper's own need a learned one.
        for options in ({"swapper": "deepfake9000"}, {"mask": "occlusion"}, {"mask_regions": ["nose"]}):
            assert_error(
                client.post("/v1/swap", files=image_files(), data={"options": json.dumps(options)}),
                422,
                "invalid_options",
            )


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    install(
        folder,
        {
            "inswapper_128": z.inswapper(RNG.normal(size=(512, 512)).astype(np.float32)),
            "arcface_w600k_r50": z.arcface(RNG.normal(size=(3, 512))),
            "gfpgan_1.4": z.restorer(),
            "xseg_1": z.xseg(channel=0),
            "simswap_256": z.simswap(),  # without its embedding converter: not usable
        },
    )
    return folder


def test_installed_models_are_offered_and_run_in_jobs(tmp_path, models_dir):
    # video_workers=2: a learned model's video job still runs in the worker itself (runner: no fork).
    with client_for(tmp_path, models_dir, video_workers=2) as client:
        caps = client.get("/v1/capabilities").json()
        assert names(caps["swappers"]) == ["mesh", "inswapper_128"]
        assert "non-commercial" in caps["swappers"][1]["licence"] and caps["swappers"][1]["learned"]
        assert names(caps["enhancers"]) == ["none", "gfpgan_1.4"]
        assert names(caps["masks"]) == ["mesh", "box", "occlusion"] and caps["mask_regions"] == []
        options = {"swapper": "inswapper_128", "enhancer": "gfpgan_1.4", "mask": "occlusion"}
        response = client.post("/v1/jobs", files=image_files(), data={"options": json.dumps(options)})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], {})
        assert job["status"] == "done", job
        assert job["summary"]["swapper"] == "inswapper_128" and job["summary"]["faces_swapped"] == 1
        assert job["options"] == options
        # The synchronous endpoint takes the same choices, and builds their Pipeline once: a second
        # request opens no model again.
        swapped = client.post("/v1/swap", files=image_files(), data={"options": json.dumps(options)})
        assert swapped.status_code == 200 and swapped.headers["x-faces-swapped"] == "1"
        pipelines = client.app.state.services.pipelines
        opened = pipelines.pool().created
        assert len(pipelines._built) == 1 and opened == 4  # inswapper, arcface, gfpgan, xseg
        swapped = client.post("/v1/swap", files=image_files(), data={"options": json.dumps(options)})
        assert swapped.status_code == 200 and pipelines.pool().created == opened
        again = client.post("/v1/jobs", files=image_files(), data={"options": json.dumps(options)})
        assert wait_for(client, again.json()["id"], {})["status"] == "done"
        video = {"swapper": "inswapper_128", "trim_end": "1.5"}
        files = [upload("source", "images/obama.jpg"), upload("target", "video/short_hamilton_clip.mp4")]
        response = client.post("/v1/jobs", files=files, data={"options": json.dumps(video)})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], {})
        assert job["status"] == "done", job
        assert job["summary"]["swapper"] == "inswapper_128" and job["summary"]["faces_swapped"] > 0


def test_region_mask_needs_the_parser(tmp_path, models_dir):
    from facefuse.service.capabilities import Installed, unavailable
    from facefuse.service.options import JobOptions

    installed = Installed.scan(models_dir)
    opts = JobOptions(swapper="inswapper_128", mask="region", mask_regions=["skin", "nose"])
    assert "bisenet_resnet_34" in unavailable(opts, installed)
    assert unavailable(JobOptions(swapper="inswapper_128", mask="occlusion"), installed) is None
    assert set(REGIONS) >= {"skin", "nose"}


def test_a_scale_out_worker_takes_its_models_from_models_dir(tmp_path, models_dir, monkeypatch):
    from facefuse.cli import build_parser
    from facefuse.cli_worker import load_worker
    from facefuse.errors import ModelMissing
    from facefuse.service.options import JobOptions

    monkeypatch.setenv("FACEFUSE_MODELS_DIR", str(tmp_path / "empty"))  # the default folder has nothing
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(tmp_path / "config"))
    # --no-verify: the test models are small stand-ins, not the published files.
    argv = ["worker", "--broker", "redis://x", "--storage", str(tmp_path / "files"), "--no-verify"]
    learned = JobOptions(swapper="inswapper_128")
    parser = build_parser()
    worker = load_worker(parser.parse_args([*argv, "--models-dir", str(models_dir)]), tmp_path / "w", "w1")
    try:
        assert worker.pipeline_for(learned).swapper.name == "inswapper_128"
    finally:
        worker.close()
    without = load_worker(parser.parse_args(argv), tmp_path / "w", "w2")
    try:
        with pytest.raises(ModelMissing):
            without.pipeline_for(learned)
    finally:
        without.close()
