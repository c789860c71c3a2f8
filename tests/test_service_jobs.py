"""The job system without HTTP: store, storage, runner, local queue, expiry."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import media

from facefuse.media import inspect_file
from facefuse.service.jobs import Job, JobKind, JobStatus, SQLiteJobStore, new_job_id
from facefuse.service.queue import LocalQueue
from facefuse.service.runner import Worker, expire_results, input_prefix, process_job
from facefuse.service.storage import BadKey, DirectoryStorage


@pytest.fixture
def store(tmp_path):
    return SQLiteJobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture
def storage(tmp_path):
    return DirectoryStorage(tmp_path / "files")


@pytest.fixture(scope="module")
def worker(pipe, tmp_path_factory):
    from facefuse.media.labels import SigningIdentity

    config = tmp_path_factory.getbasetemp() / "config"
    work = Worker(
        pipeline=pipe,
        work_root=tmp_path_factory.mktemp("work"),
        signer=SigningIdentity.load_or_create(config).signer(),
        id="test-worker",
    )
    yield work
    work.close()


def image_job(storage, owner="alice", options=None, source="images/obama.jpg", target="images/biden.jpg"):
    job_id = new_job_id()
    src_key, tgt_key = f"{input_prefix(job_id)}/source-0.jpg", f"{input_prefix(job_id)}/target.jpg"
    storage.put(src_key, media(source).read_bytes())
    storage.put(tgt_key, media(target).read_bytes())
    return Job(
        id=job_id,
        owner=owner,
        kind=JobKind.IMAGE,
        options=options or {},
        inputs={"sources": [src_key], "target": tgt_key, "reference": None},
    )


def test_store_round_trip_and_listing(store):
    a = Job(id=new_job_id(), owner="alice", kind=JobKind.IMAGE, options={"mode": "many"}, created_at=1.0)
    b = Job(id=new_job_id(), owner="alice", kind=JobKind.VIDEO, created_at=2.0)
    c = Job(id=new_job_id(), owner="bob", kind=JobKind.IMAGE, created_at=3.0)
    for job in (a, b, c):
        store.create(job)
    got = store.get(a.id)
    assert got == a and got.options == {"mode": "many"} and got.status is JobStatus.QUEUED
    assert [j.id for j in store.list("alice")] == [b.id, a.id]  # newest first, only the owner's
    assert store.count_active("alice") == 2
    assert store.update(a.id, progress={"stage": "swap", "frames_done": 3, "frames_total": 9})
    assert store.get(a.id).progress["frames_done"] == 3
    # A conditional update does nothing when the status is not the expected one.
    assert not store.update(a.id, expect=[JobStatus.RUNNING], status=JobStatus.DONE)
    assert store.get(a.id).status is JobStatus.QUEUED
    store.delete(c.id)
    assert store.get(c.id) is None and store.get("nope") is None


def test_claim_is_atomic_across_threads(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    ids = [new_job_id() for _ in range(20)]
    for job_id in ids:
        store.create(Job(id=job_id, owner="o", kind=JobKind.IMAGE))
    wins: dict[str, list[str]] = {}
    lock = threading.Lock()

    def grab(worker: str) -> None:
        mine = SQLiteJobStore(path)  # a separate connection, as another process would have
        for job_id in ids:
            if mine.claim(job_id, worker):
                with lock:
                    wins.setdefault(job_id, []).append(worker)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(ids) and all(len(w) == 1 for w in wins.values())
    job = store.get(ids[0])
    assert job.status is JobStatus.RUNNING and job.worker == wins[ids[0]][0] and job.attempts == 1


def test_storage_rejects_keys_that_escape(storage, tmp_path):
    for bad in ("../x", "/etc/passwd", "jobs/../../x", "Jobs/UPPER", "a//b", "", "jobs/x/.."):
        with pytest.raises(BadKey):
            storage.put(bad, b"x")
    storage.put("jobs/abc/in/source-0.jpg", b"data")
    assert storage.get("jobs/abc/in/source-0.jpg") == b"data" and storage.exists("jobs/abc/in/source-0.jpg")
    storage.delete("jobs/abc")  # a prefix removes the folder
    assert not (tmp_path / "files" / "jobs" / "abc").exists()


def test_image_job_runs_to_a_labelled_output_and_drops_its_inputs(store, storage, worker):
    job = image_job(storage, options={"output_format": "png"})
    store.create(job)
    done = process_job(job.id, worker, storage, store)
    assert done.status is JobStatus.DONE, done.error
    assert done.output == f"jobs/{job.id}/result.png" and storage.exists(done.output)
    assert done.summary["faces_swapped"] == 1 and done.expires_at > time.time()
    assert done.progress["stage"] == "done"
    with storage.local_path(done.output) as path:
        report = inspect_file(path)
    assert report.label and "AI-generated" in report.label and report.manifest_valid
    assert not (storage.root / input_prefix(job.id)).exists()
    # A second claim of the same job is refused: it is no longer queued.
    assert process_job(job.id, worker, storage, store) is None


def test_failed_job_reports_a_code_without_server_paths(store, storage, worker):
    job = image_job(storage, target="groups/dogs_no_faces.jpg")
    store.create(job)
    done = process_job(job.id, worker, storage, store)
    assert done.status is JobStatus.FAILED and done.output is None
    assert done.error["code"] == "no_target_face"
    assert str(storage.root) not in done.error["message"] and "target" in done.error["message"]
    assert not (storage.root / "jobs" / job.id).exists()


def test_expiry_deletes_results(store, storage, worker):
    job = image_job(storage)
    store.create(job)
    done = process_job(job.id, worker, storage, store)
    assert done.status is JobStatus.DONE
    assert expire_results(store, storage, now=time.time()) == []  # not yet
    assert expire_results(store, storage, now=done.expires_at + 1) == [job.id]
    assert store.get(job.id).status is JobStatus.EXPIRED and not storage.exists(done.output)
    # The record answers for a while longer (410 from the API), then goes too.
    assert store.forget_expired(before=done.expires_at - 1) == [] and store.get(job.id) is not None
    assert store.forget_expired(before=done.expires_at + 1) == [job.id]
    assert store.get(job.id) is None and store.list("alice") == []


def test_local_queue_runs_jobs_and_cancels_queued_ones(store, storage, worker, tmp_path):
    # A job a dead process left running: start() queues it again, ahead of anything new.
    leftover = image_job(storage)
    store.create(leftover)
    assert store.claim(leftover.id, "dead-worker")
    q = LocalQueue(store, storage, tmp_path / "work", workers=1, make_worker=lambda worker_id: worker)
    q.start()
    # Created after start(), so only these submissions queue them, and one worker takes them in order:
    # by the time job 2 is done, the cancelled job 1 has been skipped and its files removed.
    jobs = [image_job(storage) for _ in range(3)]
    for job in jobs:
        store.create(job)
    store.update(jobs[1].id, status=JobStatus.CANCELLED)  # cancelled before a worker got to it
    for job in jobs:
        q.submit(job.id)
    deadline = time.time() + 60
    while time.time() < deadline and store.get(jobs[2].id).status is not JobStatus.DONE:
        time.sleep(0.1)
    statuses = [store.get(j.id).status for j in jobs]
    assert statuses == [JobStatus.DONE, JobStatus.CANCELLED, JobStatus.DONE]
    assert not (storage.root / "jobs" / jobs[1].id).exists()
    done = store.get(leftover.id)
    assert done.status is JobStatus.DONE and done.attempts == 2
    q.stop(timeout=5)
