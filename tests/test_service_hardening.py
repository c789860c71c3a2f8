"""Review fixes for the service: other web pages kept out, streamed results, output limits, quotas."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_helpers import assert_error, files_under, image_files

from facefuse.service.app import Settings, create_app

LOCAL = "http://127.0.0.1:8000"


def keyless(tmp_path, **overrides):
    settings = Settings(data_dir=tmp_path / "data", rate_limit_per_minute=0, **overrides)
    app = create_app(settings)
    return TestClient(app, base_url=LOCAL), app.state.services, settings


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_keyless_server_refuses_a_foreign_host(tmp_path, host):
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so the browser sends its Host.
    client, _, _ = keyless(tmp_path)
    assert_error(client.get("/v1/jobs", headers={"Host": host}), 400, "invalid_host")
    assert_error(client.get("/", headers={"Host": host}), 400, "invalid_host")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"])
def test_keyless_server_answers_loopback_names(tmp_path, host):
    client, _, _ = keyless(tmp_path)
    assert client.get("/v1/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://localhost:3000"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_post_is_refused_and_nothing_stored(tmp_path, headers):
    client, svc, settings = keyless(tmp_path)
    before = files_under(settings.data_dir)
    response = client.post("/v1/jobs", files=image_files(), headers=headers)
    assert_error(response, 403, "forbidden_origin")
    assert files_under(settings.data_dir) == before
    assert svc.store.list("local", 10) == []
    assert_error(client.get("/v1/jobs", headers=headers), 403, "forbidden_origin")


def test_own_page_and_configured_origins_still_work(tmp_path):
    client, svc, _ = keyless(tmp_path, cors_origins=["https://app.example"])
    own = {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to the page
    response = client.post("/v1/jobs", files=image_files(), headers=own)
    assert response.status_code == 202, response.text
    assert client.get("/v1/jobs", headers=own).json()["jobs"][0]["id"] == response.json()["id"]
    allowed = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
    got = client.get("/v1/jobs", headers=allowed)
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == "https://app.example"
    svc.queue.stop()


class NoWholeFiles:
    """A Storage that is not a DirectoryStorage (as S3 is) and refuses to hand over whole files."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def get(self, key):
        raise AssertionError(f"storage.get({key!r}): the result must be streamed")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def done_job(svc, data: bytes):
    import time

    from facefuse.service.jobs import Job, JobKind, JobStatus, new_job_id

    job_id = new_job_id()
    key = f"jobs/{job_id}/result.mp4"
    svc.storage.put(key, data)
    job = Job(id=job_id, owner="local", kind=JobKind.VIDEO, status=JobStatus.DONE, output=key)
    job.finished_at, job.expires_at = time.time(), time.time() + 3600
    svc.store.create(job)
    return job_id


@pytest.mark.parametrize("wrapped", [False, True])
def test_result_is_streamed_not_read_whole(tmp_path, monkeypatch, wrapped):
    import os

    from facefuse.service.jobs import SQLiteJobStore
    from facefuse.service.storage import DirectoryStorage

    settings = Settings(data_dir=tmp_path / "data", rate_limit_per_minute=0)
    storage = DirectoryStorage(tmp_path / "files")
    if wrapped:
        storage = NoWholeFiles(storage)
    else:
        monkeypatch.setattr(storage, "get", NoWholeFiles(None).get)
    app = create_app(settings, SQLiteJobStore(tmp_path / "jobs.sqlite3"), storage)
    client = TestClient(app, base_url=LOCAL)
    data = os.urandom(5 * 1024 * 1024 + 123)  # several chunks and a part
    job_id = done_job(app.state.services, data)
    with client.stream("GET", f"/v1/jobs/{job_id}/result") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "video/mp4"
        assert int(response.headers["content-length"]) == len(data)
        assert response.headers["content-disposition"].startswith("attachment")
        assert response.read() == data


CLIP = "video/short_hamilton_clip.mp4"


def clip_info():
    from conftest import media

    from facefuse.media import video as media_video

    return media_video.probe(media(CLIP))


def video_files():
    from service_helpers import upload

    return [upload("source", "images/obama.jpg"), upload("target", CLIP)]


@pytest.mark.parametrize(
    ("options", "needle"),
    [('{"resolution": "16384x16384"}', "resolution"), ('{"resolution": "-1x16000"}', "resolution")],
)
def test_output_resolution_over_the_pixel_limit_is_refused(tmp_path, options, needle):
    client, svc, settings = keyless(tmp_path)
    before = files_under(settings.data_dir / "files")
    response = client.post("/v1/jobs", files=video_files(), data={"options": options})
    body = assert_error(response, 422, "invalid_options")
    assert needle in body["error"]["message"] and "40,000,000" in body["error"]["message"]
    assert files_under(settings.data_dir / "files") == before
    assert svc.store.list("local", 10) == []


def test_output_frame_count_over_the_frame_limit_is_refused(tmp_path):
    info = clip_info()
    client, svc, _ = keyless(tmp_path, max_video_frames=info.frame_count)
    fast = str(int(info.rate * 4))
    response = client.post("/v1/jobs", files=video_files(), data={"options": f'{{"fps": "{fast}"}}'})
    body = assert_error(response, 422, "invalid_options")
    assert "frames" in body["error"]["message"]
    # The same clip at its own rate, or smaller, is within the limits.
    for ok in ('{"resolution": "320x-1"}', f'{{"fps": "{info.rate}"}}'):
        assert client.post("/v1/jobs", files=video_files(), data={"options": ok}).status_code == 202
    svc.queue.stop()


def test_runner_checks_the_output_limits_too():
    from facefuse.service.options import parse_options
    from facefuse.service.uploads import output_problem

    info = clip_info()
    big = parse_options('{"resolution": "8000x8000"}')
    assert "resolution" in output_problem(info, big, 40_000_000, 18_000)
    assert output_problem(info, big, 0, 0) is None  # 0 switches a limit off
    doubled = parse_options(f'{{"fps": "{info.rate * 2}"}}')
    frames = output_problem(info, doubled, 0, info.frame_count)
    assert frames is not None and "output would have" in frames
    assert output_problem(info, doubled, 0, 2 * info.frame_count + 1) is None
    assert output_problem(info, parse_options(None), 40_000_000, info.frame_count) is None


class LostLease:
    lease_ms = 30

    def renew(self, job_id, worker_id):
        return False


class Exited(Exception):
    pass


def test_lost_lease_kills_the_segment_workers_before_exiting(monkeypatch):
    import multiprocessing
    import os
    import threading
    import time
    from types import SimpleNamespace

    from facefuse.service import celery_worker

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    child.start()
    codes = []

    def fake_exit(code):
        codes.append((code, child.is_alive()))
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    runner = celery_worker.JobRunner(None, LostLease(), None, None, worker=SimpleNamespace(id="w/1/x"))
    try:
        with pytest.raises(Exited):
            runner._beat("job", threading.Event())
    finally:
        if child.is_alive():
            child.kill()
    assert codes == [(celery_worker.EXIT_LEASE_LOST, False)]  # the child was dead before the exit
    assert child.exitcode == -9


class HeldQueue:
    """A queue that takes job ids and runs nothing (they stay queued), or fails to take them."""

    backend = "local"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.submitted: list[str] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ready(self) -> bool:
        return True

    def cancel(self, job_id: str) -> None: ...

    def submit(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.submitted.append(job_id)


def queued_app(tmp_path, queue, **overrides):
    from facefuse.service.jobs import SQLiteJobStore
    from facefuse.service.storage import DirectoryStorage

    settings = Settings(data_dir=tmp_path / "data", rate_limit_per_minute=0, **overrides)
    storage = DirectoryStorage(tmp_path / "files")
    app = create_app(settings, SQLiteJobStore(tmp_path / "jobs.sqlite3"), storage, queue)
    return TestClient(app, base_url=LOCAL), app.state.services


def test_parallel_submits_cannot_exceed_the_job_quota(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    queue = HeldQueue()
    client, svc = queued_app(tmp_path, queue, max_active_jobs=2)
    files = image_files()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/jobs", files=files).status_code, range(8)))
    assert sorted(codes) == [202, 202] + [429] * 6
    assert svc.store.count_active("local") == 2 and len(queue.submitted) == 2
    kept = {p.split("/")[1] for p in files_under(tmp_path / "files")}
    assert kept == set(queue.submitted)  # the refused ones left no inputs behind


def test_a_job_the_queue_refuses_is_failed_not_left_queued(tmp_path):
    client, svc = queued_app(tmp_path, HeldQueue(fail=True), max_active_jobs=1)
    for _ in range(2):  # the quota is not used up by jobs that never reached the queue
        assert_error(client.post("/v1/jobs", files=image_files()), 503, "unavailable")
    jobs = svc.store.list("local", 10)
    assert [j.status.value for j in jobs] == ["failed", "failed"] and all(j.expires_at for j in jobs)
    assert svc.store.count_active("local") == 0
    assert files_under(tmp_path / "files") == set()


def test_default_cache_and_work_folders_are_private(tmp_path, monkeypatch):
    import stat

    from facefuse.cli_worker import default_work_dir
    from facefuse.service.s3 import S3Storage

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEFUSE_S3_CACHE", raising=False)
    s3 = S3Storage("s3://bucket/pre", client=object())
    work = default_work_dir(s3)
    for folder in (s3.cache_dir, work, tmp_path / "cache" / "facefuse"):
        assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert tmp_path in folder.parents


def test_serve_and_worker_share_the_ttl_unit_and_log_level_flag():
    from facefuse.cli import build_parser

    parser = build_parser()
    worker = parser.parse_args(["worker", "--broker", "redis://x", "--storage", "/tmp/x"])
    assert worker.result_ttl == parser.parse_args(["serve"]).result_ttl == 24.0  # hours, both
    for argv in (["worker", "--broker", "redis://x", "--storage", "/tmp/x"], ["serve"]):
        for flag, value in (("--log-level", "debug"), ("--loglevel", "DEBUG")):
            assert parser.parse_args([*argv, flag, value]).log_level == "debug"


def test_put_file_across_file_systems_leaves_no_part_file(tmp_path, monkeypatch):
    import errno
    import os

    from facefuse.service import storage as storage_mod

    storage = storage_mod.DirectoryStorage(tmp_path / "files")
    src = tmp_path / "staged.mp4"
    src.write_bytes(b"x" * 4096)

    def cross_device(a, b):
        if str(a) == str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    real_replace = os.replace
    monkeypatch.setattr(storage_mod.os, "replace", cross_device)
    storage.put_file("jobs/a/in/target.mp4", src)
    assert storage.get("jobs/a/in/target.mp4") == b"x" * 4096 and not src.exists()

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    src.write_bytes(b"y" * 4096)
    monkeypatch.setattr(storage_mod.shutil, "copyfileobj", full_disk)
    with pytest.raises(OSError):
        storage.put_file("jobs/b/in/target.mp4", src)
    assert files_under(tmp_path / "files") == {"jobs/a/in/target.mp4"}  # no .part left behind


def test_api_key_file_written_through_a_unique_temp_file(tmp_path):
    from facefuse.service.settings import KEYS_FILE, add_key, hash_key, load_keys

    (tmp_path / f".{KEYS_FILE}.tmp").mkdir()  # the old fixed temp name, taken
    key = add_key(tmp_path, "alice")
    assert load_keys(tmp_path) == {hash_key(key): "alice"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{KEYS_FILE}.tmp", KEYS_FILE]
    assert (tmp_path / KEYS_FILE).stat().st_mode & 0o777 == 0o600
