"""The job record and where it is kept.

A `Job` is plain data; a `JobStore` keeps jobs and is the one place that decides who runs a job
(`claim` is atomic, so two workers never run the same one). `SQLiteJobStore` is the embedded
default: one WAL-mode SQLite file in the data folder, safe across threads and processes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


def new_job_id() -> str:
    """Server-chosen, unguessable (122 random bits), safe as a file name and in a URL."""
    return uuid.uuid4().hex


@dataclass
class Job:
    """One swap request. Times are Unix seconds (floats); `inputs` and `output` are storage keys.

    inputs: {"sources": [key, ...], "target": key, "reference": key | None}
    progress: {"stage": str, "frames_done": int, "frames_total": int}
    """

    id: str
    owner: str
    kind: JobKind
    options: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    status: JobStatus = JobStatus.QUEUED
    output: str | None = None
    progress: dict[str, Any] = field(
        default_factory=lambda: {"stage": "queued", "frames_done": 0, "frames_total": 0}
    )
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    error: dict[str, str] | None = None
    summary: dict[str, Any] | None = None
    worker: str | None = None
    attempts: int = 0

    def __post_init__(self) -> None:
        self.kind = JobKind(self.kind)
        self.status = JobStatus(self.status)

    def public(self, result_url: str | None = None) -> dict[str, Any]:
        """The job as the API shows it (spec: docs/service-api.md)."""
        done = int(self.progress.get("frames_done", 0))
        total = int(self.progress.get("frames_total", 0))
        fraction = 1.0 if self.status is JobStatus.DONE else (done / total if total else 0.0)
        return {
            "id": self.id,
            "kind": self.kind.value,
            "status": self.status.value,
            "progress": {
                "stage": self.progress.get("stage", self.status.value),
                "frames_done": done,
                "frames_total": total,
                "fraction": round(min(max(fraction, 0.0), 1.0), 4),
                "eta_s": self._eta(done, total),
            },
            "options": self.options,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "expires_at": iso(self.expires_at),
            "error": self.error,
            "summary": self.summary,
            "result_url": result_url if self.status is JobStatus.DONE else None,
        }

    def _eta(self, done: int, total: int) -> float | None:
        if self.status is not JobStatus.RUNNING or not self.started_at or not total or done <= 0:
            return None
        # Frames since the work began; a resumed run counts from where its stage started.
        base = int(self.progress.get("frames_at_start", 0))
        since = self.progress.get("stage_started_at") or self.started_at
        rate = (done - base) / max(time.time() - since, 1e-3)
        return round((total - done) / rate, 1) if rate > 0 else None


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class JobStore(Protocol):
    """Where jobs live. service-scale may add other stores; the worker and the API use only this."""

    def create(self, job: Job) -> None: ...

    def get(self, job_id: str) -> Job | None: ...

    def update(self, job_id: str, expect: Iterable[JobStatus] | None = None, **fields: Any) -> bool:
        """Set fields; with `expect`, only if the status is one of those. True if the row changed."""
        ...

    def list(self, owner: str, limit: int = 100) -> list[Job]: ...

    def delete(self, job_id: str) -> None: ...

    def claim(self, job_id: str, worker_id: str) -> bool:
        """Atomically move a queued job to running for `worker_id`; False if it was not queued."""
        ...

    def expired(self, now: float) -> list[Job]:
        """Finished jobs whose `expires_at` has passed (their files are due for deletion)."""
        ...

    def forget_expired(self, before: float) -> list[str]:
        """Delete the records of jobs whose results expired before `before`; their ids."""
        ...

    def count_active(self, owner: str) -> int: ...

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restarted embedded server picks up again."""
        ...


_JSON_FIELDS = frozenset({"options", "inputs", "progress", "error", "summary"})
_COLUMNS = [f.name for f in fields(Job)]


class SQLiteJobStore:
    """Jobs in one SQLite file (WAL: readers never block the writer). One connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs ("
                "id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, options TEXT, inputs TEXT, "
                "status TEXT NOT NULL, output TEXT, progress TEXT, created_at REAL NOT NULL, "
                "started_at REAL, finished_at REAL, expires_at REAL, error TEXT, summary TEXT, worker TEXT, "
                "attempts INTEGER NOT NULL DEFAULT 0)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, expires_at)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def _tx(self) -> _Transaction:
        return _Transaction(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def create(self, job: Job) -> None:
        row = _to_row(job)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})", [row[c] for c in _COLUMNS]
            )

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def update(self, job_id: str, expect: Iterable[JobStatus] | None = None, **changes: Any) -> bool:
        unknown = set(changes) - set(_COLUMNS) - {"id"}
        if unknown or "id" in changes:
            raise ValueError(f"cannot update job fields {sorted(unknown | ({'id'} & set(changes)))}")
        if not changes:
            return self.get(job_id) is not None
        sets = ", ".join(f"{name} = ?" for name in changes)
        values = [_encode(name, value) for name, value in changes.items()]
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        values.append(job_id)
        if expect is not None:
            wanted = [JobStatus(s).value for s in expect]
            sql += f" AND status IN ({', '.join('?' for _ in wanted)})"
            values += wanted
        with self._tx() as db:
            return db.execute(sql, values).rowcount == 1

    def list(self, owner: str, limit: int = 100) -> list[Job]:
        rows = self._db().execute(
            "SELECT * FROM jobs WHERE owner = ? ORDER BY created_at DESC, rowid DESC LIMIT ?", (owner, limit)
        )
        return [_from_row(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def claim(self, job_id: str, worker_id: str) -> bool:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, worker = ?, started_at = ?, attempts = attempts + 1 "
                "WHERE id = ? AND status = ?",
                (JobStatus.RUNNING.value, worker_id, now, job_id, JobStatus.QUEUED.value),
            )
            return cur.rowcount == 1

    def expired(self, now: float) -> list[Job]:
        marks = ", ".join("?" for _ in FINISHED)
        rows = self._db().execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) AND expires_at IS NOT NULL AND expires_at <= ?",
            [s.value for s in FINISHED] + [now],
        )
        return [_from_row(r) for r in rows]

    def forget_expired(self, before: float) -> list[str]:
        where = "status = ? AND expires_at IS NOT NULL AND expires_at <= ?"
        values = (JobStatus.EXPIRED.value, before)
        with self._tx() as db:
            ids = [row[0] for row in db.execute(f"SELECT id FROM jobs WHERE {where}", values)]
            db.execute(f"DELETE FROM jobs WHERE {where}", values)
        return ids

    def count_active(self, owner: str) -> int:
        row = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN (?, ?)",
                (owner, JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            )
            .fetchone()
        )
        return int(row[0])

    def unfinished(self) -> list[Job]:
        rows = self._db().execute(
            "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at, rowid",
            (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
        )
        return [_from_row(r) for r in rows]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so a claim cannot interleave."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return None if value is None else json.dumps(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def _to_row(job: Job) -> dict[str, Any]:
    return {name: _encode(name, value) for name, value in asdict(job).items()}


def _from_row(row: sqlite3.Row) -> Job:
    data = {name: row[name] for name in _COLUMNS}
    for name in _JSON_FIELDS:
        if data[name] is not None:
            data[name] = json.loads(data[name])
    if data["options"] is None:
        data["options"] = {}
    if data["inputs"] is None:
        data["inputs"] = {}
    if data["progress"] is None:
        data["progress"] = {}
    return Job(**data)
