"""The API side of the Celery backend: jobs go to Redis, `facefuse worker` processes run them."""

from __future__ import annotations

import logging
from typing import Any

from facefuse.errors import BrokerUnreachable
from facefuse.service.celery_app import TASK_NAME, CelerySettings, make_celery

log = logging.getLogger("facefuse.service")


class CeleryQueue:
    """JobQueue on Celery. The Celery task id is the job id, so a job has one identity end to end."""

    backend = "celery"

    def __init__(self, settings: CelerySettings, app: Any = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self._health: Any = None  # one pooled client for ready(), not a connection per /v1/health

    def start(self) -> None:
        check_broker(self.settings.broker)

    def stop(self) -> None:
        self.app.close()
        if self._health is not None:
            self._health.close()
            self._health = None

    def submit(self, job_id: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=self.settings.queue)

    def cancel(self, job_id: str) -> None:
        """The store already says `cancelled`: a worker that has not started the job drops it when it
        arrives, and one that is running it sees the status within a fraction of a second and stops.
        The revoke spares a worker even the look-up for messages still waiting in the queue."""
        try:
            self.app.control.revoke(job_id)
        except Exception as exc:  # the status is what counts; a lost broadcast costs one look-up
            log.warning("job %s: revoke not sent (%s)", job_id, exc)

    def ready(self) -> bool:
        import redis

        try:
            if self._health is None:
                self._health = redis.Redis.from_url(
                    self.settings.broker, socket_connect_timeout=2, socket_timeout=2
                )
            return bool(self._health.ping())
        except (redis.RedisError, ValueError):
            return False


def check_broker(url: str) -> None:
    """Raise BrokerUnreachable (one line, exit 36) unless `url` is a Redis server that answers."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:  # closed when the ping fails too
            client.close()
    except ValueError as exc:
        raise BrokerUnreachable(f"--broker {url}: not a Redis URL ({exc})") from None
    except redis.RedisError as exc:
        raise BrokerUnreachable(f"--broker {url}: cannot reach Redis ({exc})") from None
