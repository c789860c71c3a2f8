"""The REST API through FastAPI's TestClient, with real workers and the real photos and clips."""

from __future__ import annotations

import time

import pytest
from conftest import media
from fastapi.testclient import TestClient
from service_helpers import assert_error, files_under, image_files, upload, wait_for

from facefuse.media import inspect_file
from facefuse.service.app import Settings, create_app
from facefuse.service.runner import expire_results
from facefuse.service.settings import hash_key

ALICE = {"X-API-Key": "alice-key-0123456789"}
BOB = {"X-API-Key": "bob-key-0123456789"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("service")
    settings = Settings(
        data_dir=data,
        workers=1,
        api_keys={hash_key(ALICE["X-API-Key"]): "alice", hash_key(BOB["X-API-Key"]): "bob"},
        max_active_jobs=0,
        rate_limit_per_minute=0,
    )
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, app.state.services


def labelled(data: bytes, suffix: str, tmp_path) -> bool:
    path = tmp_path / f"out{suffix}"
    path.write_bytes(data)
    report = inspect_file(path)
    return bool(report.label and "AI-generated" in report.label and report.manifest_valid)


def test_health_schema_and_page(server):
    client, _ = server
    assert client.get("/v1/health").json() == {
        "status": "ok",
        "version": client.app.version,
        "backend": "local",
    }
    schema = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/swap", "/v1/faces"} <= set(
        schema["paths"]
    )
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_image_job_submit_poll_download(server, tmp_path):
    client, svc = server
    response = client.post(
        "/v1/jobs", files=image_files(), data={"options": '{"output_format": "png"}'}, headers=ALICE
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["kind"] == "image" and job["result_url"] is None
    done = wait_for(client, job["id"], ALICE)
    assert done["status"] == "done", done
    assert done["progress"]["fraction"] == 1.0 and done["summary"]["faces_swapped"] == 1
    assert done["result_url"] == f"/v1/jobs/{job['id']}/result" and done["expires_at"] > done["finished_at"]
    result = client.get(done["result_url"], headers=ALICE)
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.headers["content-disposition"].startswith('attachment; filename="facefuse-')
    assert labelled(result.content, ".png", tmp_path)
    # The inputs are gone once the job is done; only the result is kept (under the server's name).
    assert files_under(svc.storage.root / "jobs" / job["id"]) == {"result.png"}
    # Listing: newest first, only the caller's own jobs; another key cannot see or fetch it.
    assert client.get("/v1/jobs", headers=ALICE).json()["jobs"][0]["id"] == job["id"]
    assert all(j["id"] != job["id"] for j in client.get("/v1/jobs", headers=BOB).json()["jobs"])
    assert_error(client.get(f"/v1/jobs/{job['id']}", headers=BOB), 404, "not_found")
    assert_error(client.get(done["result_url"], headers=BOB), 404, "not_found")
    # Deleting a finished job removes its files and its record.
    assert client.delete(f"/v1/jobs/{job['id']}", headers=ALICE).json() == {
        "id": job["id"],
        "status": "deleted",
    }
    assert not (svc.storage.root / "jobs" / job["id"]).exists()
    assert_error(client.get(f"/v1/jobs/{job['id']}", headers=ALICE), 404)


def test_failed_job_has_an_error_and_no_result(server):
    client, _ = server
    files = image_files(target="groups/dogs_no_faces.jpg")
    job = client.post("/v1/jobs", files=files, headers=ALICE).json()
    done = wait_for(client, job["id"], ALICE)
    assert done["status"] == "failed" and done["error"]["code"] == "no_target_face"
    assert "/" not in done["error"]["message"]  # no server paths
    assert_error(client.get(f"/v1/jobs/{job['id']}/result", headers=ALICE), 409, "not_done")


def test_reference_face_index_picks_a_target_face(server):
    client, _ = server
    faces = client.post(
        "/v1/faces", files=[upload("image", "groups/obama_and_biden.jpg")], headers=ALICE
    ).json()
    assert len(faces["faces"]) >= 2
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces["faces"]]
    assert areas == sorted(areas, reverse=True) and [f["index"] for f in faces["faces"]] == list(
        range(len(areas))
    )
    options = '{"mode": "reference", "reference_face_index": 1}'
    files = image_files(target="groups/obama_and_biden.jpg")
    job = client.post("/v1/jobs", files=files, data={"options": options}, headers=ALICE).json()
    done = wait_for(client, job["id"], ALICE)
    assert done["status"] == "done", done
    (box,) = done["summary"]["swapped_boxes"]  # exactly the face picked, not the largest
    picked = faces["faces"][1]["box"]
    assert abs(box[0] - picked[0]) < 40 and abs(box[1] - picked[1]) < 40


def test_sync_swap_returns_a_labelled_image(server, tmp_path):
    client, svc = server
    before = files_under(svc.settings.data_dir)
    response = client.post(
        "/v1/swap",
        files=image_files(target="images/obama-480p.jpg", source="images/biden.jpg"),
        headers=ALICE,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-faces-swapped"] == "1"
    assert labelled(response.content, ".jpg", tmp_path)
    assert files_under(svc.settings.data_dir) - before <= {"jobs.sqlite3-wal", "jobs.sqlite3-shm"}


def test_video_job_reports_progress_and_gives_a_labelled_mp4(server, tmp_path):
    client, _ = server
    files = [upload("source", "images/obama.jpg"), upload("target", "video/short_hamilton_clip.mp4")]
    job = client.post(
        "/v1/jobs", files=files, data={"options": '{"trim_end": "24f", "crf": 30}'}, headers=ALICE
    )
    assert job.status_code == 202, job.text
    assert job.json()["kind"] == "video"
    done = wait_for(client, job.json()["id"], ALICE)
    assert done["status"] == "done", done
    assert done["progress"]["frames_total"] == 24 and done["progress"]["frames_done"] == 24
    assert done["summary"]["frames_in"] == 24 and done["summary"]["faces_swapped"] > 0
    result = client.get(done["result_url"], headers=ALICE)
    assert result.headers["content-type"] == "video/mp4"
    assert labelled(result.content, ".mp4", tmp_path)


def test_cancel_a_running_video_job(server):
    client, svc = server
    files = [upload("source", "images/obama.jpg"), upload("target", "video/short_hamilton_clip.mp4")]
    job = client.post("/v1/jobs", files=files, headers=ALICE).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()
        if state["status"] == "running" and state["progress"]["frames_done"] > 0:
            break
        time.sleep(0.05)
    assert (
        state["progress"]["stage"] == "swap"
        and state["progress"]["frames_total"] > state["progress"]["frames_done"]
    )
    assert state["progress"]["eta_s"] is None or state["progress"]["eta_s"] > 0
    assert client.delete(f"/v1/jobs/{job['id']}", headers=ALICE).json() == {
        "id": job["id"],
        "status": "cancelled",
    }
    # The worker notices within a frame or two, stops and removes everything of the job.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        (svc.storage.root / "jobs" / job["id"]).exists()
        or (svc.settings.data_dir / "work" / job["id"]).exists()
    ):
        time.sleep(0.05)
    assert not (svc.storage.root / "jobs" / job["id"]).exists()
    assert not (svc.settings.data_dir / "work" / job["id"]).exists()
    assert client.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()["status"] == "cancelled"
    assert_error(client.get(f"/v1/jobs/{job['id']}/result", headers=ALICE), 409)
    # The worker is free again: a new job runs.
    after = client.post("/v1/jobs", files=image_files(), headers=ALICE).json()
    assert wait_for(client, after["id"], ALICE)["status"] == "done"


def test_expired_results_are_deleted_and_gone(server):
    client, svc = server
    job = client.post("/v1/jobs", files=image_files(), headers=BOB).json()
    done = wait_for(client, job["id"], BOB)
    assert done["status"] == "done"
    assert job["id"] in expire_results(
        svc.store, svc.storage, now=time.time() + svc.settings.result_ttl_s + 1
    )
    assert not (svc.storage.root / "jobs" / job["id"]).exists()
    assert client.get(f"/v1/jobs/{job['id']}", headers=BOB).json()["status"] == "expired"
    assert_error(client.get(f"/v1/jobs/{job['id']}/result", headers=BOB), 410, "expired")


def test_sources_come_from_media_not_names(server):
    """A PNG uploaded under a .jpg name is stored and treated as a PNG."""
    client, svc = server
    files = [
        upload("source", "images/alex-lacamoire.png", "photo.jpg"),
        upload("target", "images/biden.jpg", "x.png"),
    ]
    job = client.post("/v1/jobs", files=files, headers=BOB).json()
    stored = svc.store.get(job["id"]).inputs
    assert stored["sources"] == [f"jobs/{job['id']}/in/source-0.png"]
    assert stored["target"] == f"jobs/{job['id']}/in/target.jpg"
    assert wait_for(client, job["id"], BOB)["status"] == "done"
    assert media("images/biden.jpg").exists()
