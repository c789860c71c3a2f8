"""Jobs in Redis, for the Celery backend: the API and every worker host see the same records.

Each job is a hash (`<prefix>job:<id>`) with one JSON value per `Job` field, so an update writes only
the fields it names and cannot undo another writer's progress. Status changes that must not race
(`update(expect=...)`, `claim`) run as Lua scripts, which Redis executes atomically.

Who runs a job is decided by a lease (`<prefix>lease:<id>`, holding the worker's id, with a time to
live): `claim` takes it only when no live worker holds it, so a job whose worker died (its lease ran
out) can be claimed again and resumed, while a job that is merely slow cannot be taken from a worker
that is still renewing its lease. `attempts` counts the claims.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any

from facefuse.service.jobs import ACTIVE, FINISHED, Job, JobStatus

_FIELDS = [f.name for f in fields(Job)]
_QUEUED, _RUNNING = json.dumps(JobStatus.QUEUED.value), json.dumps(JobStatus.RUNNING.value)

# KEYS: job. ARGV: n_expected, expected status JSON..., then field, value pairs.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
if n > 0 then
  local status = redis.call('HGET', KEYS[1], 'status')
  local ok = false
  for i = 2, n + 1 do if status == ARGV[i] then ok = true end end
  if not ok then return 0 end
end
if #ARGV > n + 1 then redis.call('HSET', KEYS[1], unpack(ARGV, n + 2)) end
return 1
"""

# KEYS: job, lease. ARGV: worker id, lease ms, worker JSON, now JSON. Returns the attempt number or 0.
_CLAIM = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '{_QUEUED}' and status ~= '{_RUNNING}' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
redis.call('HSET', KEYS[1], 'status', '{_RUNNING}', 'worker', ARGV[3], 'attempts', tostring(attempts))
local started = redis.call('HGET', KEYS[1], 'started_at')
if not started or started == 'null' then redis.call('HSET', KEYS[1], 'started_at', ARGV[4]) end
return attempts
"""

# KEYS: lease. ARGV: worker id, lease ms. 1 if this worker still holds the lease (and it was renewed).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease. ARGV: worker id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisJobStore:
    """The JobStore protocol on Redis, plus the lease that `claim` takes (renew/release/holder)."""

    def __init__(self, url_or_client: str | Any, *, prefix: str = "facefuse:", lease_s: float = 30.0) -> None:
        import redis

        self.redis = (
            redis.Redis.from_url(url_or_client, socket_timeout=30)
            if isinstance(url_or_client, str)
            else url_or_client
        )
        self.prefix = prefix
        self.lease_ms = max(1, round(lease_s * 1000))
        self._update = self.redis.register_script(_UPDATE)
        self._claim = self.redis.register_script(_CLAIM)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    # -- keys -----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _lease(self, job_id: str) -> str:
        return f"{self.prefix}lease:{job_id}"

    def _owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def _active(self, owner: str) -> str:
        return f"{self.prefix}active:{owner}"  # ids that may be queued or running (pruned on read)

    @property
    def _all(self) -> str:
        return f"{self.prefix}jobs"  # every job id, by creation time

    @property
    def _expiry(self) -> str:
        return f"{self.prefix}expiry"  # job ids by expires_at

    @property
    def _expired(self) -> str:
        return f"{self.prefix}expired"  # ids of jobs whose files are gone, by when they went

    # -- JobStore -------------------------------------------------------------------------------

    def create(self, job: Job) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self._job(job.id), mapping=_encode_all(job))
        pipe.zadd(self._all, {job.id: job.created_at})
        pipe.zadd(self._owner(job.owner), {job.id: job.created_at})
        if job.status in ACTIVE:
            pipe.sadd(self._active(job.owner), job.id)
        if job.expires_at is not None:
            pipe.zadd(self._expiry, {job.id: job.expires_at})
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        return _decode(self.redis.hgetall(self._job(job_id)))

    def update(self, job_id: str, expect: Iterable[JobStatus] | None = None, **changes: Any) -> bool:
        unknown = set(changes) - set(_FIELDS)
        if unknown or "id" in changes or "owner" in changes:
            raise ValueError(f"cannot update job fields {sorted(unknown | ({'id', 'owner'} & set(changes)))}")
        wanted = [json.dumps(JobStatus(s).value) for s in expect] if expect is not None else []
        if expect is not None and not wanted:
            return False
        pairs: list[str] = []
        for name, value in changes.items():
            pairs += [name, _dump(value)]
        changed = bool(self._update(keys=[self._job(job_id)], args=[len(wanted), *wanted, *pairs]))
        if changed and "expires_at" in changes:
            if changes["expires_at"] is None:
                self.redis.zrem(self._expiry, job_id)
            else:
                self.redis.zadd(self._expiry, {job_id: float(changes["expires_at"])})
        if changed and changes.get("status") == JobStatus.EXPIRED:
            pipe = self.redis.pipeline()
            pipe.zrem(self._expiry, job_id)  # its files are gone: nothing left to expire
            pipe.zadd(self._expired, {job_id: time.time()})  # only the record, until forget_expired
            pipe.execute()
        return changed

    def list(self, owner: str, limit: int = 100) -> list[Job]:
        ids = self.redis.zrevrange(self._owner(owner), 0, max(limit, 1) - 1)
        return self._many(ids)

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        pipe = self.redis.pipeline()
        pipe.delete(self._job(job_id), self._lease(job_id))
        pipe.zrem(self._all, job_id)
        pipe.zrem(self._expiry, job_id)
        pipe.zrem(self._expired, job_id)
        if job is not None:
            pipe.zrem(self._owner(job.owner), job_id)
            pipe.srem(self._active(job.owner), job_id)
        pipe.execute()

    def claim(self, job_id: str, worker_id: str) -> bool:
        """Take the job's lease and mark it running; False if it is finished or a live worker has it."""
        return self.claim_attempt(job_id, worker_id) > 0

    def claim_attempt(self, job_id: str, worker_id: str) -> int:
        """Like `claim`, returning the attempt number this claim starts (0: not claimed)."""
        args = [worker_id, self.lease_ms, json.dumps(worker_id), json.dumps(time.time())]
        return int(self._claim(keys=[self._job(job_id), self._lease(job_id)], args=args))

    def expired(self, now: float) -> list[Job]:
        ids = self.redis.zrangebyscore(self._expiry, "-inf", now)
        return [job for job in self._many(ids) if job.status in FINISHED]

    def forget_expired(self, before: float) -> list[str]:
        ids = [_text(job_id) for job_id in self.redis.zrangebyscore(self._expired, "-inf", before)]
        for job_id in ids:
            self.delete(job_id)
        return ids

    def count_active(self, owner: str) -> int:
        key = self._active(owner)
        # One read of the set: a job created between two reads would look deleted and be dropped.
        members = self.redis.smembers(key)
        jobs = {job.id: job for job in self._many(members)}
        done = [job_id for job_id in members if _text(job_id) not in jobs]
        done += [job.id for job in jobs.values() if job.status not in ACTIVE]
        if done:
            self.redis.srem(key, *done)
        return sum(job.status in ACTIVE for job in jobs.values())

    def unfinished(self) -> list[Job]:
        return [job for job in self._many(self.redis.zrange(self._all, 0, -1)) if job.status in ACTIVE]

    # -- the lease ------------------------------------------------------------------------------

    def renew(self, job_id: str, worker_id: str) -> bool:
        """Extend this worker's lease; False if it has lost it (it must stop working on the job)."""
        return bool(self._renew(keys=[self._lease(job_id)], args=[worker_id, self.lease_ms]))

    def release(self, job_id: str, worker_id: str) -> None:
        self._release(keys=[self._lease(job_id)], args=[worker_id])

    def holder(self, job_id: str) -> str | None:
        value = self.redis.get(self._lease(job_id))
        return value.decode() if value is not None else None

    def ping(self) -> None:
        self.redis.ping()

    def _many(self, ids: Iterable[bytes | str]) -> list[Job]:
        ids = list(ids)
        if not ids:
            return []
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self._job(_text(job_id)))
        return [job for raw in pipe.execute() if (job := _decode(raw)) is not None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dump(value: Any) -> str:
    return json.dumps(value.value if isinstance(value, JobStatus) else value)


def _encode_all(job: Job) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in asdict(job).items()}


def _decode(raw: dict[bytes, bytes]) -> Job | None:
    if not raw:
        return None
    data = {key.decode(): json.loads(value) for key, value in raw.items()}
    return Job(**{name: data[name] for name in _FIELDS if name in data})
