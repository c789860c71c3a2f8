"""ProcessQueue: job workers in their own processes, sharing only the SQLite store and the storage."""

from __future__ import annotations

import os
import signal
import time
from functools import partial

from conftest import media
from test_service_jobs import image_job

from facefuse.service.jobs import Job, JobKind, JobStatus, SQLiteJobStore, new_job_id
from facefuse.service.procqueue import ProcessQueue, WorkerSpec, threads_per_worker
from facefuse.service.runner import input_prefix
from facefuse.service.storage import DirectoryStorage


def wait_status(store, job_id, statuses, timeout=180.0) -> Job:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id)).status not in statuses and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def test_threads_are_shared_out_not_multiplied():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1


def test_worker_processes_resume_leftovers_and_replace_a_killed_worker(tmp_path):
    db, files = tmp_path / "jobs.sqlite3", tmp_path / "files"
    store, storage = SQLiteJobStore(db), DirectoryStorage(files)
    # A job a dead server left running: start() queues it again.
    leftover = image_job(storage)
    store.create(leftover)
    assert store.claim(leftover.id, "gone")
    spec = WorkerSpec(
        open_store=partial(SQLiteJobStore, db),
        open_storage=partial(DirectoryStorage, files),
        work_root=tmp_path / "work",
    )
    queue = ProcessQueue(store, spec, workers=1)
    queue.start()
    try:
        assert queue.ready()
        (first_id, first_pid), *_ = queue.pids().items()
        assert first_pid != os.getpid()
        done = wait_status(store, leftover.id, {JobStatus.DONE, JobStatus.FAILED})
        assert done.status is JobStatus.DONE and done.worker == first_id, done.error

        # A video job whose worker is killed mid-run: a new worker takes over and finishes it.
        job_id = new_job_id()
        src, tgt = f"{input_prefix(job_id)}/source-0.jpg", f"{input_prefix(job_id)}/target.mp4"
        storage.put(src, media("images/obama.jpg").read_bytes())
        storage.put(tgt, media("video/short_hamilton_clip.mp4").read_bytes())
        store.create(
            Job(
                id=job_id,
                owner="o",
                kind=JobKind.VIDEO,
                inputs={"sources": [src], "target": tgt, "reference": None},
            )
        )
        queue.submit(job_id)
        deadline = time.monotonic() + 120
        while store.get(job_id).progress.get("stage") != "swap" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get(job_id).status is JobStatus.RUNNING
        os.kill(first_pid, signal.SIGKILL)
        job = wait_status(store, job_id, {JobStatus.DONE, JobStatus.FAILED})
        assert job.status is JobStatus.DONE, job.error
        assert job.attempts == 2 and job.worker != first_id
        assert list(queue.pids()) == [job.worker] and queue.ready()
    finally:
        queue.stop(timeout=10)
    assert queue.pids() == {}
