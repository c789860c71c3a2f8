"""Bad requests: each gets the right 4xx with a JSON error body, and nothing is stored.

The app is not started here (no models, no workers): everything below is refused before a job
could exist, which is the point.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import media
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import assert_error, files_under, image_files, upload

from facefuse.service.app import Settings, create_app
from facefuse.service.jobs import Job, JobKind, JobStatus, new_job_id
from facefuse.service.settings import hash_key

KEY = {"X-API-Key": "the-right-key-0123456789"}


def make(tmp_path, **overrides):
    settings = Settings(
        data_dir=tmp_path / "data",
        api_keys={hash_key(KEY["X-API-Key"]): "carol"},
        max_upload_bytes=3 * 1024 * 1024,
        max_pixels=4_000_000,
        rate_limit_per_minute=0,
        **overrides,
    )
    app = create_app(settings)
    svc = app.state.services
    return TestClient(app, base_url="http://127.0.0.1"), svc, files_under(settings.data_dir)


@pytest.fixture
def api(tmp_path):
    client, svc, before = make(tmp_path)
    yield client, svc
    assert files_under(svc.settings.data_dir) == before, "a refused request left files behind"
    assert svc.store.list("carol") == []


def post_job(client, files, options=None, headers=KEY):
    data = {"options": options} if options is not None else None
    return client.post("/v1/jobs", files=files, data=data, headers=headers)


def test_oversized_upload_is_413_before_it_is_read(api):
    client, _ = api
    big = media("video/obama_pan_1080p.mp4").read_bytes() * 3  # ~3.7 MB, over the 3 MB limit
    assert_error(
        post_job(client, [upload("source", "images/obama.jpg"), ("target", ("clip.mp4", big))]),
        413,
        "too_large",
    )


def test_oversized_streamed_body_without_length_is_413(api):
    client, _ = api
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="target"; filename="t.jpg"\r\n\r\n'.encode()

    def body():
        yield head
        for _ in range(64):
            yield b"\xff" * 65536  # 4 MB in chunks, no Content-Length

    response = client.post(
        "/v1/jobs",
        content=body(),
        headers={**KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "too_large")


def test_too_many_pixels_is_413_from_the_header(api):
    client, _ = api
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2500, 2000, 3), np.uint8)).save(buffer, format="PNG")  # 5 MP, small file
    files = [upload("source", "images/obama.jpg"), ("target", ("big.png", buffer.getvalue()))]
    assert_error(post_job(client, files), 413, "too_many_pixels")


def test_non_image_with_an_image_name_is_415(api):
    client, _ = api
    files = [
        ("source", ("me.jpg", b"%PDF-1.7 this is not a photo at all" * 10)),
        upload("target", "images/biden.jpg"),
    ]
    assert_error(post_job(client, files), 415, "unsupported_media")
    # And a video where a photo of a face is needed.
    files = [
        upload("source", "video/short_hamilton_clip.mp4", "me.jpg"),
        upload("target", "images/biden.jpg"),
    ]
    assert_error(post_job(client, files), 415, "unsupported_media")


def test_truncated_image_is_422(api):
    client, _ = api
    data = media("images/biden.jpg").read_bytes()
    files = [upload("source", "images/obama.jpg"), ("target", ("t.jpg", data[: len(data) // 2]))]
    assert_error(post_job(client, files), 422, "input_invalid")


def test_truncated_video_is_422(api):
    client, _ = api
    data = media("video/short_hamilton_clip.mp4").read_bytes()
    for cut in (len(data) // 2, 4096):
        files = [upload("source", "images/obama.jpg"), ("target", ("clip.mp4", data[:cut]))]
        body = assert_error(post_job(client, files), 422, "input_invalid")
        assert "upload-" not in body["error"]["message"]  # names the role, not a server path


@pytest.mark.parametrize(
    "options",
    [
        '{"mode": "sideways"}',
        '{"colour": "blue"}',
        '{"min_face": 20}',  # not per job: the workers share one detector
        '{"order": "random"}',
        '{"jpeg_quality": 0}',
        '{"index": -1}',
        '{"swapper": "inswapper_128"}',
        '{"output_format": "gif"}',
        '{"output_format": "mp4"}',
        '{"crf": 20}',
        '{"mode": "reference"}',
        "[1, 2]",
        "{not json",
    ],
)
def test_unknown_or_bad_options_are_422(api, options):
    client, _ = api
    body = assert_error(post_job(client, image_files(), options), 422)
    assert body["error"]["code"] in ("invalid_options", "invalid_request")


def test_bad_video_options_are_422(api):
    client, _ = api
    files = [upload("source", "images/obama.jpg"), upload("target", "video/short_hamilton_clip.mp4")]
    for options in ({"preset": "warp9"}, {"trim_start": "soon"}, {"fps": "0"}, {"output_format": "png"}):
        assert_error(post_job(client, files, json.dumps(options)), 422, "invalid_options")


def test_missing_parts_are_422(api):
    client, _ = api
    assert_error(post_job(client, [upload("source", "images/obama.jpg")]), 422, "invalid_request")


def test_missing_or_wrong_api_key_is_401(api):
    client, _ = api
    assert_error(post_job(client, image_files(), headers={}), 401, "unauthorized")
    response = post_job(client, image_files(), headers={"X-API-Key": "guess"})
    assert_error(response, 401, "unauthorized")
    assert_error(client.get("/v1/jobs"), 401)
    assert client.get("/v1/health").status_code == 200  # health needs no key


@pytest.mark.parametrize(
    "name", ["../../etc/passwd.jpg", "/etc/cron.d/x.jpg", "..\\..\\win.ini.jpg", "a/../../b.jpg"]
)
def test_path_traversal_file_name_is_422(api, name):
    client, _ = api
    files = [upload("source", "images/obama.jpg", name), upload("target", "images/biden.jpg")]
    assert_error(post_job(client, files), 422, "invalid_filename")


def test_sync_swap_refuses_big_images_and_videos(api):
    client, svc = api
    svc.settings.max_sync_pixels = 1_000_000
    files = image_files(target="images/obama-1080p.jpg")  # 2 MP
    assert_error(client.post("/v1/swap", files=files, headers=KEY), 413, "too_many_pixels")
    files = [upload("source", "images/obama.jpg"), upload("target", "video/short_hamilton_clip.mp4")]
    assert_error(client.post("/v1/swap", files=files, headers=KEY), 415, "unsupported_media")


def test_unknown_job_is_404(api):
    client, _ = api
    for path in ("/v1/jobs/0123", "/v1/jobs/../../etc/passwd", "/v1/jobs/" + "a" * 300 + "/result"):
        assert_error(client.get(path, headers=KEY), 404)
    assert_error(client.delete("/v1/jobs/nope", headers=KEY), 404)


def test_rate_limit_burst_is_429_with_retry_after(tmp_path):
    client, svc, before = make(tmp_path / "rl")
    svc.limiter.rate, svc.limiter.burst = 1 / 60, 3.0
    statuses = [client.get("/v1/jobs", headers=KEY).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = post_job(client, image_files())
    body = assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1 and "retry" in body["error"]["message"]
    assert files_under(svc.settings.data_dir) == before


def test_job_quota_is_429(tmp_path):
    client, svc, _ = make(tmp_path / "q", max_active_jobs=2)
    for _ in range(2):
        svc.store.create(Job(id=new_job_id(), owner="carol", kind=JobKind.IMAGE, status=JobStatus.RUNNING))
    before = files_under(svc.settings.data_dir)
    response = post_job(client, image_files())
    assert_error(response, 429, "quota_exceeded")
    assert response.headers["retry-after"]
    assert files_under(svc.settings.data_dir) == before and len(svc.store.list("carol")) == 2


def test_non_local_host_without_keys_refuses_to_start(tmp_path):
    from facefuse.errors import ExitCode, ServiceConfigError

    with pytest.raises(ServiceConfigError) as info:
        Settings(data_dir=tmp_path, host="0.0.0.0").check()
    assert info.value.exit_code == ExitCode.SERVICE_CONFIG
    Settings(data_dir=tmp_path, host="127.0.0.1").check()  # localhost alone needs none
