"""Scale-out: jobs on Celery over a real redis-server, run by real `facefuse worker` processes.

The fault test kills (SIGKILL, the whole process group: a host that vanishes) the worker that is in
the middle of a video job: the job must finish on the other worker, resumed from the segments the
dead one finished, with the same output as an uninterrupted run of the same job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from celery.result import AsyncResult
from conftest import MEDIA
from scale_helpers import RedisServer, redis_server, s3_server, without_c2pa_box

from facefuse.media import inspect_file
from facefuse.service.celery_app import TASK_NAME, CelerySettings
from facefuse.service.celery_queue import CeleryQueue
from facefuse.service.jobs import Job, JobKind, JobStatus, new_job_id
from facefuse.service.launch import ServerProcess
from facefuse.service.redis_store import RedisJobStore
from facefuse.service.runner import input_prefix
from facefuse.service.storage import DirectoryStorage

HAMILTON = MEDIA / "video" / "short_hamilton_clip.mp4"
LIN = MEDIA / "images" / "lin-manuel-miranda.png"
OBAMA = MEDIA / "images" / "obama-480p.jpg"
BIDEN = MEDIA / "images" / "biden.jpg"
# Short enough for CI, long enough to kill mid-job: 150 frames in segments of 15.
VIDEO_OPTIONS = {"trim_end": "150f", "crf": 23}
SEGMENT_FRAMES = 15
FRAMES_LONG = 240  # of the Hamilton clip's 275
# Quick recovery for the test: a dead worker's job is handed out again after ~3 s.
SETTINGS = {"visibility_timeout_s": 3.0, "lease_s": 3.0}
JOB_TIMEOUT_S = 120
READY_TIMEOUT_S = 90

pytestmark = pytest.mark.slow


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool:
        return " ready" in self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, like a host that loses power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        # Nothing to finish gracefully at the end of a test: stop the worker and its pool at once.
        self.kill()


@dataclass
class Cluster:
    redis: RedisServer
    folder: Path
    config: Path
    settings: CelerySettings
    store: RedisJobStore
    queue: CeleryQueue
    workers: list[WorkerProc]

    def start_worker(self, name: str, storage: str, env: dict[str, str] | None = None) -> WorkerProc:
        log = self.folder / f"worker-{name}.log"
        args = [sys.executable, "-m", "facefuse", "worker", "--broker", self.redis.url, "--storage", storage]
        args += ["--name", name, "--concurrency", "1", "--segment-frames", str(SEGMENT_FRAMES)]
        args += ["--visibility-timeout", str(SETTINGS["visibility_timeout_s"])]
        args += ["--lease", str(SETTINGS["lease_s"])]
        full_env = {**os.environ, "FACEFUSE_CONFIG_DIR": str(self.config), **(env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        worker = WorkerProc(name, proc, log)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProc) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(w.ready() for w in workers):
            for w in workers:
                assert w.proc.poll() is None, f"worker {w.name} exited:\n{w.log.read_text()}"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)

    def submit(self, storage: DirectoryStorage | object, kind: JobKind, target: Path, options: dict) -> Job:
        job_id = new_job_id()
        src_key = f"{input_prefix(job_id)}/source-0{LIN.suffix}"
        tgt_key = f"{input_prefix(job_id)}/target{target.suffix}"
        storage.put(src_key, LIN.read_bytes())
        storage.put(tgt_key, target.read_bytes())
        job = Job(
            id=job_id,
            owner="tester",
            kind=kind,
            options=options,
            inputs={"sources": [src_key], "target": tgt_key, "reference": None},
        )
        self.store.create(job)
        self.queue.submit(job_id)
        return job

    def wait(self, job_id: str, until: JobStatus = JobStatus.DONE) -> Job:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            job = self.store.get(job_id)
            assert job is not None
            if job.status is until:
                return job
            assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING), f"job ended {job.status}: {job.error}"
            assert time.monotonic() < deadline, f"job still {job.status} ({job.progress}); {self.logs()}"
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log.read_text(errors='replace')[-3000:]}" for w in self.workers)

    def worker_of(self, job: Job) -> WorkerProc:
        name = (job.worker or "").split("@", 1)[0]
        (found,) = [w for w in self.workers if w.name == name]
        return found


@contextlib.contextmanager
def make_cluster(folder: Path, config: Path) -> Iterator[Cluster]:
    """A redis-server of its own, a queue to submit with; workers started later are stopped at the end."""
    with redis_server(folder / "redis") as redis:
        settings = CelerySettings(broker=redis.url, **SETTINGS)
        store = RedisJobStore(redis.url, lease_s=settings.lease_s)
        queue = CeleryQueue(settings)
        queue.start()
        cluster = Cluster(redis, folder, config, settings, store, queue, [])
        try:
            yield cluster
        finally:
            for worker in cluster.workers:
                worker.stop()
            queue.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    config = tmp_path_factory.getbasetemp() / "config"
    with make_cluster(tmp_path_factory.mktemp("scale"), config) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def shared(cluster: Cluster) -> DirectoryStorage:
    return DirectoryStorage(cluster.folder / "shared")


@dataclass
class Api:
    """`facefuse serve --backend celery` in a subprocess, and an HTTP client for it."""

    server: ServerProcess
    client: httpx.Client

    def post_job(self, target: Path, options: dict) -> dict:
        files = [("source", (LIN.name, LIN.read_bytes())), ("target", (target.name, target.read_bytes()))]
        response = self.client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, until: str = "done") -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := self.job(job_id))["status"] != until:
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        return job

    def result(self, job: dict) -> bytes:
        response = self.client.get(job["result_url"])
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture(scope="module")
def api(cluster: Cluster, shared: DirectoryStorage) -> Iterator[Api]:
    args = ["--backend", "celery", "--broker", cluster.redis.url, "--storage", str(shared.root)]
    args += [
        "--visibility-timeout",
        str(SETTINGS["visibility_timeout_s"]),
        "--lease",
        str(SETTINGS["lease_s"]),
    ]
    args += ["--rate-limit", "0"]  # the test polls fast
    env = {**os.environ, "FACEFUSE_CONFIG_DIR": str(cluster.config)}
    with (
        ServerProcess(cluster.folder / "api", *args, env=env) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        assert client.get("/v1/health").json()["backend"] == "celery"
        yield Api(server, client)


def outcome(delivery: AsyncResult) -> str:
    """How a task delivery ended, read by polling (no result subscription left behind)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    # Each .state is a fresh read from the backend: read it once per turn, or the task can
    # finish between the loop test and the check and look like an unexpected state.
    while (state := delivery.state) != "SUCCESS":
        assert state in ("PENDING", "RETRY"), state
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return delivery.result


@pytest.fixture(scope="module")
def two_workers(cluster: Cluster, shared: DirectoryStorage) -> list[WorkerProc]:
    workers = [cluster.start_worker(name, str(shared.root)) for name in ("alpha", "beta")]
    cluster.wait_ready(*workers)
    return workers


def test_image_job_through_the_api_and_celery(
    cluster: Cluster, api: Api, two_workers, tmp_path: Path
) -> None:
    posted = api.post_job(BIDEN, {})
    done = api.wait(posted["id"])
    assert done["summary"]["faces_swapped"] >= 1 and done["progress"]["fraction"] == 1.0
    record = cluster.store.get(posted["id"])
    assert record.attempts == 1 and record.worker.split("@", 1)[0] in {"alpha", "beta"}
    out = tmp_path / "result.jpg"
    out.write_bytes(api.result(done))
    report = inspect_file(out)
    assert report.label and report.manifest_valid
    assert api.client.get("/v1/jobs").json()["jobs"][0]["id"] == posted["id"]  # newest first


def test_busy_job_is_not_run_twice(cluster: Cluster, shared: DirectoryStorage, two_workers) -> None:
    """A second delivery while the job runs (Redis re-sends after the visibility timeout) waits."""
    job = cluster.submit(shared, JobKind.VIDEO, HAMILTON, {"trim_end": "90f"})
    running = cluster.wait(job.id, JobStatus.RUNNING)
    duplicate = cluster.queue.app.send_task(TASK_NAME, args=[job.id], queue=cluster.settings.queue)
    states = set()
    while (current := cluster.store.get(job.id)).status is JobStatus.RUNNING:
        states.add(duplicate.state)
        time.sleep(0.02)
    assert current.status is JobStatus.DONE
    assert "RETRY" in states  # the idle worker got the copy while the job ran, and put it off
    assert outcome(duplicate) == "finished"
    done = cluster.store.get(job.id)
    assert done.attempts == 1 and done.worker == running.worker


def test_cancel_a_running_job_on_a_worker(
    cluster: Cluster, shared: DirectoryStorage, api: Api, two_workers
) -> None:
    job_id = api.post_job(HAMILTON, {"trim_end": "150f"})["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while api.job(job_id)["progress"]["frames_done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert api.client.delete(f"/v1/jobs/{job_id}").json() == {"id": job_id, "status": "cancelled"}
    # The worker notices within a fraction of a second, stops and removes everything of the job.
    deadline = time.monotonic() + 30
    while (
        (shared.root / "jobs" / job_id).exists()
        or (shared.root / "work" / job_id).exists()
        or cluster.store.holder(job_id) is not None  # the lease is given back
    ):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    assert api.job(job_id)["status"] == "cancelled"
    assert api.client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_killed_pool_process_job_is_put_back_and_resumed(
    cluster: Cluster, shared: DirectoryStorage, api: Api, two_workers: list[WorkerProc]
) -> None:
    """Only the process running the job dies (out of memory, say): its worker puts the job back at once."""
    # Long enough that the holder is still at work at its next heartbeat (every lease_s / 3): with 90
    # frames the last 60 could all be done within that second, and a holder that finished never
    # learned it had lost the lease (its pool process lives on, so the wait below timed out).
    job_id = api.post_job(HAMILTON, {"trim_end": f"{FRAMES_LONG}f"})["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while api.job(job_id)["progress"]["frames_done"] < 2 * SEGMENT_FRAMES:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    running = cluster.store.get(job_id)
    pool_pid = int(running.worker.split("/")[1])  # worker ids are NAME@HOST/PID/NONCE
    os.kill(pool_pid, signal.SIGKILL)
    done = api.wait(job_id)
    record = cluster.store.get(job_id)
    assert record.attempts == 2 and record.worker != running.worker
    assert done["summary"]["segments_resumed"] >= 1 and done["summary"]["frames_in"] == FRAMES_LONG
    assert all(w.proc.poll() is None for w in two_workers)  # both workers are still up


def test_worker_that_loses_its_lease_stops_dead(
    cluster: Cluster, shared: DirectoryStorage, api: Api, two_workers: list[WorkerProc]
) -> None:
    """Someone else took the lease (the holder was cut off from Redis for longer than the lease):
    the old holder must stop at once and leave the job's files alone for the new one."""
    # Long enough that the holder is still at work at its next heartbeat (every lease_s / 3): with 90
    # frames the last 60 could all be done within that second, and a holder that finished never
    # learned it had lost the lease (its pool process lives on, so the wait below timed out).
    job_id = api.post_job(HAMILTON, {"trim_end": f"{FRAMES_LONG}f"})["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while api.job(job_id)["progress"]["frames_done"] < 2 * SEGMENT_FRAMES:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    holder = cluster.store.get(job_id).worker
    # The intruder holds the lease until the holder is gone, however slowly a loaded host runs the
    # holder's next renewal (a short-lived key could expire first and the holder would never notice).
    lease_key = f"facefuse:lease:{job_id}"
    cluster.store.redis.set(lease_key, "intruder", px=JOB_TIMEOUT_S * 1000)
    pool_pid = int(holder.split("/")[1])
    while Path(f"/proc/{pool_pid}").exists() and "zombie" not in _proc_state(pool_pid):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    cluster.store.redis.delete(lease_key)  # the intruder goes too: a worker may resume the job now
    done = api.wait(job_id)
    record = cluster.store.get(job_id)
    assert record.attempts == 2 and record.worker not in (holder, "intruder")
    assert done["summary"]["segments_resumed"] >= 1 and done["summary"]["frames_in"] == FRAMES_LONG
    assert any(f"lease lost by {holder}" in w.log.read_text() for w in two_workers)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_killed_worker_job_completes_elsewhere_with_the_same_output(
    cluster: Cluster, shared: DirectoryStorage, api: Api, two_workers: list[WorkerProc]
) -> None:
    clean = api.wait(api.post_job(HAMILTON, VIDEO_OPTIONS)["id"])
    assert cluster.store.get(clean["id"]).attempts == 1 and clean["summary"]["segments_resumed"] == 0
    total = clean["summary"]["frames_in"]
    assert total == 150 and clean["summary"]["segments"] == total // SEGMENT_FRAMES

    job_id = api.post_job(HAMILTON, VIDEO_OPTIONS)["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:  # kill once two segments' worth of frames are done, well before the end
        progress = api.job(job_id)["progress"]
        if progress["frames_done"] >= 2 * SEGMENT_FRAMES:
            break
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    victim = cluster.worker_of(cluster.store.get(job_id))
    victim.kill()
    killed_at = api.job(job_id)
    assert killed_at["status"] == "running"
    assert killed_at["progress"]["frames_done"] < total, "the job finished before the kill: make it longer"

    done = api.wait(job_id)
    record = cluster.store.get(job_id)
    survivor = cluster.worker_of(record)
    assert survivor is not victim and survivor.proc.poll() is None
    # Two claims: the dead worker's and the survivor's; never both at once (the lease).
    assert record.attempts == 2
    assert done["summary"]["segments_resumed"] >= 1, "the survivor started over instead of resuming"
    assert done["summary"]["frames_in"] == total
    assert done["summary"]["faces_swapped"] == clean["summary"]["faces_swapped"]

    ours, theirs = api.result(done), api.result(clean)
    assert without_c2pa_box(ours) == without_c2pa_box(theirs)  # every frame, timestamp and audio sample
    assert len(without_c2pa_box(ours)) > 0.9 * len(ours)
    assert inspect_file(shared.path(record.output)).manifest_valid
    assert not (shared.root / "work" / job_id).exists()  # the work folder went with the finished job

    # The dead worker's message, or any duplicate, must not run the finished job again.
    before = shared.path(record.output).stat().st_mtime_ns
    duplicate = cluster.queue.app.send_task(TASK_NAME, args=[job_id], queue=cluster.settings.queue)
    assert outcome(duplicate) == "finished"
    after = cluster.store.get(job_id)
    assert after.attempts == 2 and after.status is JobStatus.DONE
    assert shared.path(record.output).stat().st_mtime_ns == before


def test_worker_refuses_bad_settings(cluster: Cluster, tmp_path: Path) -> None:
    cases = [
        (["--broker", "redis://127.0.0.1:1/0", "--storage", str(tmp_path)], 36, "cannot reach Redis"),
        (["--broker", "amqp://x", "--storage", str(tmp_path)], 35, "redis://"),
        (["--broker", cluster.redis.url, "--storage", str(tmp_path / "nope")], 37, "no such folder"),
    ]
    for args, code, text in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "facefuse", "worker", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "FACEFUSE_CONFIG_DIR": str(cluster.config)},
        )
        assert proc.returncode == code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_image_job_on_s3_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facefuse.service.s3 import S3Storage

    config = Path(os.environ["FACEFUSE_CONFIG_DIR"])  # the conftest points it at a throwaway folder
    with s3_server() as s3, make_cluster(tmp_path, config) as cluster:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        url = f"s3://{s3.bucket}/facefuse"
        storage = S3Storage(url, endpoint_url=s3.endpoint)
        worker = cluster.start_worker("s3", url, s3.env)
        cluster.wait_ready(worker)
        job = cluster.submit(storage, JobKind.IMAGE, OBAMA, {"output_format": "png"})
        done = cluster.wait(job.id)
        assert done.worker.startswith("s3@") and done.output.endswith(".png")
        assert storage.exists(done.output) and storage.size(done.output) > 1000
        with storage.local_path(done.output) as path:
            report = inspect_file(path)
        assert report.label and report.manifest_valid
        deadline = time.monotonic() + 30  # the worker drops the inputs right after it marks the job done
        while storage.keys(input_prefix(job.id)):
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)


def test_s3_storage_round_trip(tmp_path: Path) -> None:
    from facefuse.service.s3 import S3Storage, parse_s3_url

    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_url("http://bucket/a")
    with s3_server() as s3, pytest.MonkeyPatch.context() as env:
        for key, value in s3.env.items():
            env.setenv(key, value)
        storage = S3Storage(f"s3://{s3.bucket}/pre", endpoint_url=s3.endpoint, cache_dir=tmp_path / "cache")
        storage.check()
        storage.put("jobs/j1/in/a.bin", b"abc")
        storage.put("jobs/j1/result.png", b"x" * 10)
        assert storage.get("jobs/j1/in/a.bin") == b"abc" and storage.size("jobs/j1/result.png") == 10
        assert storage.keys("jobs/j1") == ["jobs/j1/in/a.bin", "jobs/j1/result.png"]
        with storage.local_path("jobs/j1/in/a.bin") as path:
            assert path.read_bytes() == b"abc"
            first = path.stat().st_mtime_ns
        assert not path.exists()
        # The same object is the same file every time (the video resume check fingerprints it).
        with storage.local_path("jobs/j1/in/a.bin") as again:
            assert again == path and again.stat().st_mtime_ns == first
        with pytest.raises(FileNotFoundError):
            storage.get("jobs/j1/missing")
        assert not storage.exists("jobs/j1/missing")
        storage.delete("jobs/j1/in")
        assert storage.keys("jobs/j1") == ["jobs/j1/result.png"]
        storage.delete("jobs/j1")
        assert storage.keys("jobs/j1") == [] and not storage.exists("jobs/j1/result.png")
        assert storage.client.list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0) == 0


def test_redis_store_and_leases(cluster: Cluster) -> None:
    store = RedisJobStore(cluster.redis.url, prefix="unit:", lease_s=0.3)
    a = Job(id=new_job_id(), owner="ann", kind=JobKind.VIDEO, options={"crf": 20}, created_at=1.0)
    b = Job(id=new_job_id(), owner="ann", kind=JobKind.IMAGE, created_at=2.0)
    for job in (a, b):
        store.create(job)
    assert store.get(a.id) == a and store.get("nope") is None
    assert [j.id for j in store.list("ann")] == [b.id, a.id] and store.list("bob") == []
    assert store.count_active("ann") == 2 and {j.id for j in store.unfinished()} == {a.id, b.id}
    assert not store.update(a.id, expect=[JobStatus.RUNNING], progress={"frames_done": 1})
    with pytest.raises(ValueError):
        store.update(a.id, owner="eve")

    # One claim at a time; a claim outlives its worker only as long as its lease.
    assert store.claim_attempt(a.id, "w1") == 1 and not store.claim(a.id, "w2")
    assert store.holder(a.id) == "w1" and store.renew(a.id, "w1") and not store.renew(a.id, "w2")
    assert store.update(a.id, expect=[JobStatus.RUNNING], progress={"frames_done": 5})
    time.sleep(0.5)  # w1 died: no heartbeat
    assert store.claim_attempt(a.id, "w2") == 2 and not store.renew(a.id, "w1")
    store.release(a.id, "w1")  # not its lease any more: no effect
    assert store.holder(a.id) == "w2"
    running = store.get(a.id)
    assert running.status is JobStatus.RUNNING and running.worker == "w2" and running.attempts == 2
    assert running.progress == {"frames_done": 5} and running.options == {"crf": 20}

    # Finished jobs are never claimed again; expiry and the active count follow the status.
    store.release(a.id, "w2")
    assert store.update(a.id, expect=[JobStatus.RUNNING], status=JobStatus.DONE, expires_at=10.0)
    assert not store.claim(a.id, "w3") and store.count_active("ann") == 1
    assert [j.id for j in store.expired(now=11.0)] == [a.id] and store.expired(now=9.0) == []
    assert store.update(a.id, status=JobStatus.EXPIRED) and store.expired(now=11.0) == []
    store.delete(b.id)
    assert store.get(b.id) is None and [j.id for j in store.list("ann")] == [a.id]
    assert store.count_active("ann") == 0

    # An expired job's record goes too, once it has been expired long enough.
    assert store.forget_expired(before=time.time() - 60) == [] and store.get(a.id) is not None
    assert store.forget_expired(before=time.time() + 1) == [a.id]
    assert store.get(a.id) is None and store.list("ann") == [] and store.forget_expired(time.time() + 1) == []


def test_redis_count_active_keeps_a_job_created_while_it_counts(cluster: Cluster) -> None:
    import redis as redis_lib

    plain = RedisJobStore(cluster.redis.url, prefix="race:")
    late = Job(id=new_job_id(), owner="cy", kind=JobKind.IMAGE)

    class CreateDuringCount(redis_lib.Redis):
        def smembers(self, name):  # another API process creates a job right after the set is read
            members = super().smembers(name)
            if plain.get(late.id) is None:
                plain.create(late)
            return members

    store = RedisJobStore(CreateDuringCount.from_url(cluster.redis.url), prefix="race:")
    store.create(Job(id=new_job_id(), owner="cy", kind=JobKind.IMAGE))
    assert store.count_active("cy") in (1, 2)
    assert plain.count_active("cy") == 2  # the late job still counts against the quota


def test_health_reuses_one_broker_connection(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis as redis_lib

    queue = CeleryQueue(CelerySettings(broker=cluster.redis.url))
    made = []
    real = redis_lib.Redis.from_url
    monkeypatch.setattr(redis_lib.Redis, "from_url", lambda *a, **k: made.append(a) or real(*a, **k))
    try:
        assert all(queue.ready() for _ in range(20))
        assert len(made) == 1
    finally:
        queue.stop()
    down = CeleryQueue(CelerySettings(broker="redis://127.0.0.1:1/0"))
    assert not down.ready() and not down.ready()
    down.stop()
