"""`facefuse worker`: run jobs from the Redis queue, on any number of hosts.

A worker is a Celery prefork pool: the parent keeps the broker connection, each child process loads
the models once when it starts (`worker_process_init`) and runs one job at a time. What one job
delivery does (`JobRunner.execute`):

1. The job is finished (done, failed, cancelled, expired) or gone: drop the message. A redelivered
   or duplicated message never runs a job twice.
2. Another live worker holds the job's lease: send the message again after a delay (the holder may
   still die) and drop this copy.
3. Otherwise take the lease and run the job, renewing the lease from a heartbeat thread. A video job
   resumes from the finished segments in the shared work folder, so a job whose worker died goes on
   where it stopped and ends with the same bytes.

A worker that cannot renew its lease before it runs out (Redis unreachable, the process frozen) has
lost the job to whoever claims it next; it exits at once without touching the job's files, as if it
had crashed, and the pool starts a fresh process in its place.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from facefuse.service.celery_app import TASK_NAME, CelerySettings
from facefuse.service.jobs import ACTIVE, Job, JobStatus
from facefuse.service.redis_store import RedisJobStore
from facefuse.service.storage import Storage

log = logging.getLogger("facefuse.worker")

EXIT_LEASE_LOST = 75  # a pool process that lost its job's lease ends with this status
PR_SET_PDEATHSIG = 1


class Outcome(StrEnum):
    RAN = "ran"  # this delivery ran the job (to done, failed or cancelled)
    FINISHED = "finished"  # already finished or gone: nothing to do
    BUSY = "busy"  # a live worker holds the lease: try again later
    RECOVERED = "recovered"  # the result was stored but the status was not: recorded, not redone


@dataclass
class JobRunner:
    """What one worker process needs to run job deliveries. `load` runs once per process."""

    settings: CelerySettings
    store: RedisJobStore
    storage: Storage
    load_worker: Callable[[str], Any]  # worker id -> facefuse.service.runner.Worker (models loaded)
    node: str = field(default_factory=socket.gethostname)
    worker: Any = None

    def load(self) -> None:
        worker_id = f"{self.node}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.worker = self.load_worker(worker_id)
        log.info("worker %s ready", worker_id)

    def execute(self, job_id: str) -> Outcome:
        from facefuse.service.runner import StoreProgress, job_prefix, run_job

        if self.worker is None:
            self.load()
        job = self.store.get(job_id)
        if job is None or job.status not in ACTIVE:
            return Outcome.FINISHED
        attempt = self.store.claim_attempt(job_id, self.worker.id)
        if not attempt:
            job = self.store.get(job_id)
            return Outcome.BUSY if job is not None and job.status in ACTIVE else Outcome.FINISHED
        log.info("job %s: attempt %d on %s", job_id, attempt, self.worker.id)
        with self._heartbeat(job_id):
            job = self.store.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING:
                return Outcome.FINISHED
            if self._recover(job):
                return Outcome.RECOVERED
            progress = StoreProgress(self.store, job_id)
            final = run_job(job, self.worker.pipeline, self.storage, self.store, progress, worker=self.worker)
        if final.status is JobStatus.CANCELLED:  # the owner gave up on it: nothing of it is kept
            self.storage.delete(job_prefix(job_id))
        return Outcome.RAN

    def _recover(self, job: Job) -> bool:
        """A previous attempt stored the result and died before it marked the job done."""
        from facefuse.service.runner import output_format_for, output_key

        key = output_key(job.id, output_format_for(job))
        if not self.storage.exists(key):
            return False
        now = time.time()
        return self.store.update(
            job.id,
            expect=[JobStatus.RUNNING],
            status=JobStatus.DONE,
            output=key,
            summary={"recovered": True},
            finished_at=now,
            expires_at=now + self.worker.result_ttl_s,
        )

    @contextlib.contextmanager
    def _heartbeat(self, job_id: str) -> Iterator[None]:
        stop = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(job_id, stop), name=f"lease-{job_id[:8]}", daemon=True
        )
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(Exception):
                self.store.release(job_id, self.worker.id)

    def _beat(self, job_id: str, stop: threading.Event) -> None:
        lease_s = self.store.lease_ms / 1000
        deadline = time.monotonic() + lease_s
        while not stop.wait(lease_s / 3):
            try:
                held = self.store.renew(job_id, self.worker.id)
            except Exception as exc:  # Redis away for a moment: the lease may still be ours
                log.warning("job %s: lease not renewed (%s)", job_id, exc)
                held = time.monotonic() < deadline
            else:
                if held:
                    deadline = time.monotonic() + lease_s
            if not held and not stop.is_set():
                # Another worker may already be running the job: stop dead, leave its files alone.
                log.error("job %s: lease lost by %s; this process exits", job_id, self.worker.id)
                end_children()
                os._exit(EXIT_LEASE_LOST)


def end_children(timeout_s: float = 5.0) -> None:
    """Kill this process's multiprocessing children (a video job's segment workers) and reap them.
    os._exit skips the hook that ends daemonic children, and a segment worker left running would
    keep writing into the job's work folder while another worker resumes the job there."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
    for child in children:
        with contextlib.suppress(Exception):
            child.join(timeout_s)


def register_task(app: Any, runner: JobRunner) -> Any:
    """Define the job task on `app`, bound to `runner` (no module state: one runner per worker)."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_job_task(task: Any, job_id: str) -> str:
        outcome = runner.execute(job_id)
        if outcome is Outcome.BUSY:
            raise task.retry(countdown=runner.settings.busy_retry_s)
        return outcome.value

    return run_job_task


def die_with_parent() -> None:
    """Ask Linux to kill this pool process when the worker's main process dies (a lost host must not
    leave a half-orphaned job running next to its redelivered copy)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_worker(
    settings: CelerySettings,
    runner: JobRunner,
    *,
    concurrency: int,
    name: str,
    loglevel: str = "INFO",
) -> int:
    """Run the Celery worker in this process until it is stopped; its exit status."""
    from celery.signals import worker_process_init

    from facefuse.service.celery_app import make_celery

    app = make_celery(settings)
    app.conf.update(
        # Loading the models can take longer than Celery's default 4 s on a busy host.
        worker_proc_alive_timeout=300,
        worker_max_tasks_per_child=None,
    )
    register_task(app, runner)

    def on_process_init(**_: Any) -> None:
        die_with_parent()
        runner.load()

    worker_process_init.connect(on_process_init, weak=False)
    worker = app.Worker(
        hostname=f"{name}@%h",
        concurrency=concurrency,
        pool="prefork",
        loglevel=loglevel,
        queues=[settings.queue],
        optimization="fair",
        without_gossip=True,
        without_mingle=True,
    )
    worker.start()
    return int(worker.exitcode or 0)
