"""Getting queued jobs to workers. `LocalQueue`: the embedded default, worker threads in this process.

Each worker thread loads its own models (a `Worker`: Pipeline + signer) once when the queue starts,
never per job. service-scale's Celery queue implements the same Protocol.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from facefuse.service.jobs import JobStatus, JobStore
from facefuse.service.runner import Worker, job_prefix, process_job
from facefuse.service.storage import Storage

log = logging.getLogger("facefuse.service")


class JobQueue(Protocol):
    backend: str  # "local" | "celery": shown by /v1/health

    def start(self) -> None:
        """Load models / connect; called once when the app starts (before it takes requests)."""
        ...

    def stop(self) -> None: ...

    def submit(self, job_id: str) -> None: ...

    def cancel(self, job_id: str) -> None:
        """Ask a running job to stop soon (its status is already `cancelled` in the store)."""
        ...

    def ready(self) -> bool: ...


class LocalQueue:
    """In-process worker threads pulling job ids from a FIFO.

    At start-up jobs left queued or running by a previous process (a crash, a kill) are queued again;
    a video job then resumes from its finished segments.
    """

    backend = "local"

    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        work_root: Path,
        *,
        workers: int = 1,
        make_worker: Callable[[str], Worker] | None = None,
        result_ttl_s: float = 24 * 3600.0,
        max_pixels: int = 40_000_000,
        max_video_frames: int = 18_000,
        video_workers: int = 1,
        models_dir: Path | None = None,
        verify_models: bool = True,
    ) -> None:
        self.store = store
        self.storage = storage
        self.work_root = Path(work_root)
        self.count = workers
        self._make_worker = make_worker or (
            lambda wid: Worker.load(
                self.work_root,
                worker_id=wid,
                result_ttl_s=result_ttl_s,
                max_pixels=max_pixels,
                max_video_frames=max_video_frames,
                video_workers=video_workers,
                models_dir=models_dir,
                verify_models=verify_models,
            )
        )
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._loaded = threading.Barrier(workers + 1)
        self._errors: list[BaseException] = []
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for n in range(self.count):
            thread = threading.Thread(
                target=self._main, args=(f"local-{n}",), name=f"facefuse-worker-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._loaded.wait()  # every worker has its models before the first request is taken
        if self._errors:
            raise self._errors[0]
        for job in self.store.unfinished():
            if job.status is JobStatus.RUNNING:
                self.store.update(job.id, expect=[JobStatus.RUNNING], status=JobStatus.QUEUED)
            self.submit(job.id)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs being run, leave the rest queued in the store for the next start."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def submit(self, job_id: str) -> None:
        self._jobs.put(job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def ready(self) -> bool:
        return self._started and any(t.is_alive() for t in self._threads)

    def pending(self) -> int:
        return self._jobs.qsize()

    def _main(self, worker_id: str) -> None:
        try:
            worker = self._make_worker(worker_id)
        except BaseException as exc:
            self._errors.append(exc)
            self._loaded.wait()
            return
        self._loaded.wait()
        try:
            while (job_id := self._jobs.get()) is not None:
                try:
                    process_job(
                        job_id, worker, self.storage, self.store, lambda j=job_id: self._is_cancelled(j)
                    )
                except Exception:  # never let one job kill the worker thread
                    log.exception("job %s: worker error", job_id)
                finally:
                    with self._lock:
                        self._cancelled.discard(job_id)
                    self._cleanup_if_cancelled(job_id)
        finally:
            worker.close()

    def _is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def _cleanup_if_cancelled(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is not None and job.status is JobStatus.CANCELLED:
            self.storage.delete(job_prefix(job_id))
