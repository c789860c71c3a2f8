"""Helpers shared by the service tests: uploads of the real photos, waiting on jobs, file snapshots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import media

JOB_TIMEOUT_S = 180


def upload(field: str, name: str, filename: str | None = None) -> tuple[str, tuple[str, bytes]]:
    path = media(name)
    return field, (filename or path.name, path.read_bytes())


def image_files(source: str = "images/obama.jpg", target: str = "images/biden.jpg") -> list:
    return [upload("source", source), upload("target", target)]


def wait_for(
    client: Any, job_id: str, headers: dict[str, str], until: tuple[str, ...] = ("done", "failed")
) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in until or job["status"] in ("done", "failed", "cancelled", "expired"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S} s")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_error(response: Any, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["request_id"], body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    assert response.headers["x-request-id"] == body["request_id"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body
