"""`ProcessQueue`: the embedded backend with job workers in their own processes (`facefuse serve`).

Worker threads in the API process share its GIL with uvicorn, so a busy worker slows every request and
N threads never run N jobs at once. Here each worker is a spawned process that loads its models once
at start-up, then takes job ids from a shared queue. Everything else goes through what is already
multi-process safe: the SQLite store (WAL; `claim` is atomic, so a job id delivered twice runs once)
and the directory storage (temp file + rename). Cancel, progress and expiry need nothing extra: a
running job reads its status from the store (runner._cancel_check) and writes its progress there.

No orphans: a worker ignores Ctrl-C (the server shuts down and stops it), and asks Linux to SIGKILL it
when the thread that started it ends, so a SIGKILLed server takes its workers with it. That thread is
the queue's supervisor, which lives as long as the queue (a pool thread could be reaped while idle).
A worker that dies is replaced, and the jobs it held are queued again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefuse.service.jobs import JobStatus, JobStore
from facefuse.service.storage import Storage

log = logging.getLogger("facefuse.service")

PR_SET_PDEATHSIG = 1
SUPERVISE_INTERVAL_S = 0.5
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs; pickled into it, so only plain data and importable callables."""

    open_store: Callable[[], JobStore]
    open_storage: Callable[[], Storage]
    work_root: Path
    worker_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1  # native threads (OpenCV, OpenMP) per worker: cores shared out, not multiplied
    log_level: int = logging.INFO


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


class ProcessQueue:
    """N worker processes fed from one multiprocessing queue; see the module docstring."""

    backend = "local"

    def __init__(
        self,
        store: JobStore,
        spec: WorkerSpec,
        *,
        workers: int = 1,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.store = store
        self.spec = spec
        self.count = workers
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._jobs: Any = self._ctx.Queue()
        self._events: Any = self._ctx.Queue()
        self._procs: dict[str, Any] = {}  # worker id -> Process
        self._generation = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._error: str | None = None
        self._supervisor: threading.Thread | None = None
        self._started = False

    # -- JobQueue ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._supervisor = threading.Thread(target=self._supervise, name="facefuse-workers", daemon=True)
        self._supervisor.start()
        self._ready.wait()
        if self._error is not None:
            self.stop()
            raise RuntimeError(f"a job worker failed to start: {self._error}")
        self._requeue(lambda job: True)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the workers finish the jobs they run; the rest stay queued in the store for next time."""
        self._stopping.set()
        self._ready.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout + 10.0)
            self._supervisor = None

    def submit(self, job_id: str) -> None:
        self._jobs.put(job_id)

    def cancel(self, job_id: str) -> None:
        """Nothing to send: the job's worker sees `cancelled` in the store within a fraction of a second."""

    def ready(self) -> bool:
        alive = any(p.is_alive() for p in list(self._procs.values()))
        return self._ready.is_set() and self._error is None and alive

    def pids(self) -> dict[str, int]:
        """Worker id -> process id of the live workers."""
        return {wid: p.pid for wid, p in list(self._procs.items()) if p.pid is not None and p.is_alive()}

    # -- the supervisor thread --------------------------------------------------------------------

    def _spawn(self, n: int) -> str:
        self._generation += 1
        worker_id = f"local-{n}.{self._generation}"
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.spec, worker_id, os.getpid(), self._jobs, self._events),
            name=f"facefuse-worker-{n}",
            daemon=True,
        )
        proc.start()
        self._procs[worker_id] = proc
        return worker_id

    def _supervise(self) -> None:
        try:
            for n in range(self.count):
                self._spawn(n)
            self._wait_loaded()
            self._ready.set()
            while not self._stopping.wait(SUPERVISE_INTERVAL_S):
                self._drain_events()
                self._replace_dead()
        finally:
            self._ready.set()
            self._shutdown(30.0)

    def _wait_loaded(self) -> None:
        waiting = set(self._procs)
        deadline = time.monotonic() + self.start_timeout_s
        while waiting and self._error is None and not self._stopping.is_set():
            if time.monotonic() > deadline:
                self._error = f"models not loaded after {self.start_timeout_s:.0f} s"
                return
            with contextlib.suppress(Exception):
                kind, worker_id, detail = self._events.get(timeout=0.2)
                if kind == "error":
                    self._error = detail
                waiting.discard(worker_id)
            for worker_id in list(waiting):
                proc = self._procs[worker_id]
                if not proc.is_alive():
                    self._error = f"worker {worker_id} exited with {proc.exitcode} while loading"

    def _drain_events(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                kind, worker_id, detail = self._events.get_nowait()
                if kind == "error":
                    log.error("worker %s: %s", worker_id, detail)

    def _replace_dead(self) -> None:
        for worker_id, proc in list(self._procs.items()):
            if proc.is_alive():
                continue
            log.error("worker %s (pid %s) died (%s); starting another", worker_id, proc.pid, proc.exitcode)
            del self._procs[worker_id]
            n = int(worker_id.split("-")[1].split(".")[0])
            self._spawn(n)
            # Its running job goes back to the queue; queued ids it may have taken are sent again
            # (a duplicate is harmless: only one claim of a queued job succeeds).
            self._requeue(lambda job, dead=worker_id: job.status is JobStatus.QUEUED or job.worker == dead)

    def _requeue(self, which: Callable[[Any], bool]) -> None:
        for job in self.store.unfinished():
            if not which(job):
                continue
            if job.status is JobStatus.RUNNING:
                self.store.update(job.id, expect=[JobStatus.RUNNING], status=JobStatus.QUEUED)
            self.submit(job.id)

    def _shutdown(self, timeout: float) -> None:
        for _ in self._procs:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs.values():
            if proc.is_alive():
                log.warning("job worker pid %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join(5.0)
        self._procs.clear()
        for q in (self._jobs, self._events):
            q.cancel_join_thread()  # ids left in the pipe are in the store; never block on them
            q.close()


# -- the worker process -----------------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the thread that started it ends (a killed server leaves no workers)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def limit_threads(threads: int) -> None:
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    import cv2

    cv2.setNumThreads(threads)


def worker_main(spec: WorkerSpec, worker_id: str, parent_pid: int, jobs: Any, events: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)
    logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit_threads(spec.threads)
    from facefuse.service.runner import Worker, job_prefix, process_job

    try:
        store, storage = spec.open_store(), spec.open_storage()
        worker = Worker.load(spec.work_root, worker_id=worker_id, **spec.worker_kwargs)
    except BaseException as exc:
        events.put(("error", worker_id, f"{type(exc).__name__}: {exc}"))
        return
    events.put(("ready", worker_id, str(os.getpid())))
    try:
        while (job_id := jobs.get()) is not None:
            try:
                process_job(job_id, worker, storage, store)
            except Exception:  # never let one job kill the worker
                log.exception("job %s: worker error", job_id)
            job = store.get(job_id)
            if job is not None and job.status is JobStatus.CANCELLED:
                storage.delete(job_prefix(job_id))
    finally:
        worker.close()
