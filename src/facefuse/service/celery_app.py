"""The Celery app that carries jobs from the API to `facefuse worker` processes over Redis.

Delivery is at-least-once and the job store makes it exactly-once in effect:

- A job's message is acknowledged only after the job has finished (`acks_late`), and a worker
  process that dies mid-job gets its message put back (`reject_on_worker_lost`). A whole worker host
  that dies cannot put anything back; Redis hands its unacknowledged message to another worker once
  the broker's visibility timeout has passed (kombu checks every `restore_interval_s`).
- That timeout is no deadline on a job: when a job runs longer, its message comes back while it is
  still running. A worker runs a job only after winning its lease in Redis (`RedisJobStore.claim`);
  the running worker renews the lease (heartbeat) well within its time to live. A delivery that
  finds the lease held elsewhere is re-sent with a delay instead of run; one that finds the job done,
  failed or cancelled is dropped. So a job is never lost and never run by two workers at once.
- Each worker reserves one message per process (`prefetch_multiplier = 1`), so a queued job waits
  in Redis, where any idle worker can take it, rather than behind a busy one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TASK_NAME = "facefuse.run_job"
QUEUE_NAME = "facefuse"
DEFAULT_VISIBILITY_TIMEOUT_S = 600.0
DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True)
class CelerySettings:
    """How to reach the broker and how quickly lost work comes back.

    visibility_timeout_s: after this long an unacknowledged message (its worker host died) is handed
        to another worker. Short means quick recovery; a job that runs longer is protected by its lease.
    lease_s: a running job's lease lives this long without a heartbeat (renewed every lease_s / 3); a
        redelivered job waits at most about this long after its worker died.
    """

    broker: str
    result_backend: str | None = None  # default: the broker
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    lease_s: float = DEFAULT_LEASE_S
    queue: str = QUEUE_NAME

    @property
    def restore_interval_s(self) -> float:
        # Look for lost messages a few times per timeout, but not more than once a second.
        return max(1.0, min(10.0, self.visibility_timeout_s / 4))

    @property
    def busy_retry_s(self) -> float:
        """Delay before a delivery that found the job running elsewhere is tried again.

        Shorter than the visibility timeout, or Redis would hand the delayed message (held unacked
        by the worker that waits for its ETA) to yet another worker.
        """
        return max(0.5, min(self.lease_s, self.visibility_timeout_s / 2))


def make_celery(settings: CelerySettings) -> Any:
    """A Celery app configured for facefuse jobs; workers register the task on it."""
    from celery import Celery

    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.restore_interval_s,
        # kombu scans only every Nth sweep by default; with 1 the interval above is the period.
        "unacked_restore_throttle": 1,
    }
    app = Celery("facefuse", broker=settings.broker, backend=settings.result_backend or settings.broker)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # Job status and progress live in the job store (the same Redis); Celery's results only
        # record how each delivery ended ("ran", "finished", ...).
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app
