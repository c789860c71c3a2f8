"""`facefuse serve` for real: uvicorn in a child process; start, submit, poll, download, shut down."""

from __future__ import annotations

import signal
import time

import httpx
from cli_helpers import run_cli
from service_helpers import JOB_TIMEOUT_S, image_files

from facefuse.errors import ExitCode
from facefuse.media import inspect_file
from facefuse.service.launch import ServerProcess


def test_serve_end_to_end(tmp_path, monkeypatch):
    config = tmp_path / "config"
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(config))
    data = tmp_path / "data"
    key = run_cli(config, "serve", "--data-dir", data, "--create-key", "dana")
    assert key.returncode == 0, key.stderr
    api_key = key.stdout.strip()
    assert api_key.startswith("ffk_") and api_key not in (data / "api-keys.json").read_text()  # hashed

    server = ServerProcess(data, "--workers", "1")
    with server:
        headers = {"X-API-Key": api_key}
        assert httpx.get(f"{server.url}/v1/jobs", timeout=10).status_code == 401  # keys exist: required
        response = httpx.post(f"{server.url}/v1/jobs", files=image_files(), headers=headers, timeout=60)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers, timeout=10).json())[
            "status"
        ] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job["status"] == "done", job
        result = httpx.get(f"{server.url}{job['result_url']}", headers=headers, timeout=30)
        assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
        assert result.headers["x-request-id"]
        out = tmp_path / "out.jpg"
        out.write_bytes(result.content)
        report = inspect_file(out)
        assert report.label and report.manifest_valid
    log = server.log.read_text()
    # SIGTERM: uvicorn drains, runs the shutdown (workers stopped), then re-raises the signal.
    assert server.proc.returncode in (0, -signal.SIGTERM), log[-2000:]
    assert "Application shutdown complete" in log
    assert "request_id=" in log and "POST /v1/jobs -> 202" in log
    assert not list((data / "tmp").glob("upload-*"))


def test_serve_beyond_localhost_needs_keys(tmp_path):
    proc = run_cli(tmp_path / "config", "serve", "--host", "0.0.0.0", "--data-dir", tmp_path / "data")
    assert proc.returncode == ExitCode.SERVICE_CONFIG, proc.stderr
    assert proc.stderr.count("\n") == 1 and "API keys" in proc.stderr and "Traceback" not in proc.stderr
