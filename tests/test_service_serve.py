"""`facefuse serve` for real: uvicorn in a child process; start, submit, poll, download, shut down."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from cli_helpers import run_cli
from service_helpers import JOB_TIMEOUT_S, image_files, upload

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


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc: worker processes, multiprocessing helpers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _worker_pids(server: ServerProcess) -> list[int]:
    return [
        pid
        for pid in _children(server.proc.pid)
        if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _run_job(url: str, files: list) -> dict:
    response = httpx.post(f"{url}/v1/jobs", files=files, timeout=60)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json())["status"] in (
        "queued",
        "running",
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    return job


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_serve_worker_processes_run_jobs_and_die_with_the_server(tmp_path, monkeypatch, how):
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(tmp_path / "config"))
    server = ServerProcess(tmp_path / "data", "--workers", "2")
    server.wait_ready()
    try:
        workers = _worker_pids(server)
        assert len(workers) == 2, _children(server.proc.pid)
        job = _run_job(server.url, image_files())
        assert job["status"] == "done", job
        # The job ran in a worker process, not in the API process.
        assert job["summary"]["faces_swapped"] == 1
        everything = _children(server.proc.pid)
        server.proc.send_signal(how)
        server.proc.wait(60)
        assert _wait_gone(everything) == [], "processes left behind by the server"
    finally:
        server.stop()


def test_serve_cancels_a_running_job_in_a_worker_process(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(tmp_path / "config"))
    data = tmp_path / "data"
    with ServerProcess(data, "--workers", "1") as server:
        files = [upload("source", "images/obama.jpg"), upload("target", "video/obama_pan_1080p.mp4")]
        response = httpx.post(f"{server.url}/v1/jobs", files=files, timeout=60)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json())["progress"][
            "stage"
        ] != "swap" and time.monotonic() < deadline:
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.05)
        assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
        # The worker process notices from the store, stops, and removes the job's files.
        deadline = time.monotonic() + 30
        while (data / "files" / "jobs" / job_id).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (data / "files" / "jobs" / job_id).exists()
        assert httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
        # The worker is free again: the next job runs.
        assert _run_job(server.url, image_files())["status"] == "done"


def test_serve_port_in_use_is_one_line_before_anything_loads(tmp_path):
    import socket

    from cli_helpers import assert_one_line_error

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        proc = run_cli(tmp_path / "config", "serve", "--port", str(port), "--data-dir", data)
    assert_one_line_error(proc, ExitCode.SERVICE_START, str(port))
    assert not (data / "jobs.sqlite3").exists()  # refused before the store, models and workers


@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_serve_port_out_of_range(tmp_path, port):
    from cli_helpers import assert_one_line_error

    proc = run_cli(tmp_path / "config", "serve", "--port", port, "--data-dir", tmp_path / "data")
    assert_one_line_error(proc, ExitCode.SERVICE_CONFIG, "--port")


def test_serve_start_up_failure_is_one_line(tmp_path):
    from cli_helpers import assert_one_line_error

    from facefuse.service.launch import free_port

    data = tmp_path / "data"
    data.mkdir()
    (data / "tmp").write_text("a file where the upload staging folder should be")
    proc = run_cli(tmp_path / "config", "serve", "--port", str(free_port()), "--data-dir", data)
    assert_one_line_error(proc, ExitCode.SERVICE_START, "start-up failed")
    # A facefuse error at start-up (the signing key folder is a file) keeps its own code, one line.
    config = tmp_path / "config-file"
    config.write_text("a file where the signing key folder should be")
    proc = run_cli(config, "serve", "--port", str(free_port()), "--data-dir", tmp_path / "data2")
    assert proc.returncode not in (0, 3) and proc.stderr.count("\n") == 1, proc.stderr
    assert "signing identity" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_help_lists_the_exit_codes(tmp_path):
    proc = run_cli(tmp_path / "config", "serve", "--help")
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "32" in proc.stdout and "port is in use" in proc.stdout
