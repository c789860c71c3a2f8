"""`facefuse worker`: a scale-out job worker (Celery over Redis, shared storage)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from facefuse.errors import ExitCode, ScaleConfigError, StorageUnreachable

DESCRIPTION = """\
Run jobs that `facefuse serve --backend celery` queues in Redis. Start any number of workers on any
number of hosts; they share the job records in Redis and the files in --storage (a folder every host
mounts at the same path, or an S3-compatible bucket). Each pool process loads the models once at
start-up and runs one job at a time. A job is acknowledged only when it has finished: if a worker
dies mid-job, another one takes the job over (after --visibility-timeout) and a video goes on from
its last finished segment."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from facefuse.cli import exit_codes_text
    from facefuse.cli_models import add_models_folder_arguments

    worker = sub.add_parser(
        "worker",
        help="run queued service jobs (scale-out: Redis broker, shared storage)",
        description=DESCRIPTION,
        epilog=exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scale_arguments(worker, storage_required=True)
    worker.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="jobs at once: pool processes (default 1)"
    )
    worker.add_argument("--name", default="facefuse", help="worker name, shown in logs (default facefuse)")
    worker.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where video segments are kept while a job runs (default: DIR/work for a --storage folder, "
        "so a job resumes on any host; ~/.cache/facefuse/work, private, for a bucket)",
    )
    worker.add_argument(
        "--max-pixels", type=int, default=40_000_000, metavar="N", help="largest image or frame (40 MP)"
    )
    worker.add_argument(
        "--max-video-frames", type=int, default=18_000, metavar="N", help="longest video (18000 frames)"
    )
    worker.add_argument(
        "--video-workers", type=int, default=1, metavar="N", help="processes per video job (default 1)"
    )
    worker.add_argument(
        "--segment-frames",
        type=int,
        default=0,
        metavar="N",
        help="frames per video segment, the work a taken-over job keeps (default: automatic; use the "
        "same value on every worker)",
    )
    add_models_folder_arguments(worker, "learned models for jobs: the folder `serve --models-dir` offers")
    add_service_arguments(worker)
    worker.set_defaults(func=cmd_worker)
    return worker


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """--result-ttl and --log-level, the same for `serve` and `worker` (hours; Celery's spelling too)."""
    parser.add_argument(
        "--result-ttl", type=float, default=24.0, metavar="HOURS", help="results are deleted after this (24)"
    )
    parser.add_argument(
        "--log-level",
        "--loglevel",  # Celery's spelling, kept working
        dest="log_level",
        type=str.lower,
        default="info",
        choices=["debug", "info", "warning", "error"],
    )


def add_scale_arguments(parser: argparse.ArgumentParser, *, storage_required: bool) -> None:
    """--broker, --storage, --visibility-timeout, --lease: shared by `worker` and `serve --backend celery`."""
    from facefuse.service.celery_app import DEFAULT_LEASE_S, DEFAULT_VISIBILITY_TIMEOUT_S

    group = parser.add_argument_group("scale-out (Celery over Redis)")
    group.add_argument(
        "--broker",
        default=os.environ.get("FACEFUSE_BROKER"),
        metavar="URL",
        help="Redis URL for the queue and the job records, e.g. redis://host:6379/0 ($FACEFUSE_BROKER)",
    )
    group.add_argument(
        "--storage",
        default=os.environ.get("FACEFUSE_STORAGE"),
        required=storage_required and not os.environ.get("FACEFUSE_STORAGE"),
        metavar="DIR|s3://BUCKET/PREFIX",
        help="shared storage for inputs and results: a folder every host mounts at the same path, or "
        "an S3-compatible bucket (endpoint: $FACEFUSE_S3_ENDPOINT; credentials as for the AWS CLI) "
        "($FACEFUSE_STORAGE)",
    )
    group.add_argument(
        "--visibility-timeout",
        type=float,
        default=DEFAULT_VISIBILITY_TIMEOUT_S,
        metavar="S",
        help=f"a job whose worker vanished goes to another worker after S seconds "
        f"(default {DEFAULT_VISIBILITY_TIMEOUT_S:.0f}; use the same value everywhere)",
    )
    group.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help=f"a running job's lease lasts S seconds between heartbeats (default {DEFAULT_LEASE_S:.0f})",
    )


def celery_settings(args: argparse.Namespace) -> Any:
    from facefuse.service.celery_app import CelerySettings

    if not args.broker:
        raise ScaleConfigError("give --broker redis://HOST:PORT/DB (or set $FACEFUSE_BROKER)")
    if not args.broker.startswith(("redis://", "rediss://", "unix://")):
        raise ScaleConfigError(f"--broker {args.broker}: expected a redis:// or rediss:// URL")
    if not 0 < args.visibility_timeout <= 7 * 24 * 3600 or not 0 < args.lease <= 3600:
        raise ScaleConfigError("--visibility-timeout must be in (0, 604800] and --lease in (0, 3600] seconds")
    return CelerySettings(
        broker=args.broker, visibility_timeout_s=args.visibility_timeout, lease_s=args.lease
    )


def open_storage(spec: str | None) -> Any:
    """A DirectoryStorage for a folder, an S3Storage for s3://...; checked before any job runs."""
    if not spec:
        raise ScaleConfigError(
            "give --storage DIR or --storage s3://BUCKET/PREFIX (or set $FACEFUSE_STORAGE)"
        )
    if spec.startswith("s3://"):
        from facefuse.service.s3 import S3Storage

        try:
            storage = S3Storage(spec)
        except ValueError as exc:
            raise ScaleConfigError(f"--storage {exc}") from None
        try:
            storage.check()
        except Exception as exc:
            raise StorageUnreachable(f"--storage {spec}: the bucket cannot be reached ({exc})") from None
        return storage
    from facefuse.service.storage import DirectoryStorage

    path = Path(spec)
    if not path.is_dir():
        raise StorageUnreachable(f"--storage {spec}: no such folder (create it, or mount the shared one)")
    try:
        storage = DirectoryStorage(path)
        with tempfile.NamedTemporaryFile(dir=storage.root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise StorageUnreachable(f"--storage {spec}: cannot write there ({exc.strerror or exc})") from None
    return storage


def celery_backend(args: argparse.Namespace, data_dir: Path) -> tuple[Any, Any, Any]:
    """`serve --backend celery`: (RedisJobStore, shared storage, CeleryQueue) for create_app.

    Without --storage the API keeps files in DATA_DIR/files, which the workers must then mount."""
    _require_scale_packages()
    from facefuse.service.celery_queue import CeleryQueue, check_broker
    from facefuse.service.redis_store import RedisJobStore

    settings = celery_settings(args)
    check_broker(settings.broker)
    storage_spec = args.storage or str(data_dir / "files")
    if not args.storage:
        (data_dir / "files").mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_spec)
    return RedisJobStore(settings.broker, lease_s=settings.lease_s), storage, CeleryQueue(settings)


def _require_scale_packages() -> None:
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        raise ScaleConfigError("the scale-out packages are missing: pip install 'facefuse[scale]'") from None


def default_work_dir(storage: Any) -> Path:
    from facefuse.fsutil import private_dir
    from facefuse.service.storage import DirectoryStorage

    if isinstance(storage, DirectoryStorage):
        return storage.root / "work"  # shared: a redelivered video job resumes on any host
    return private_dir("work")


def load_worker(args: argparse.Namespace, work_root: Path, worker_id: str) -> Any:
    """The job runner of one pool process, with its models loaded, as the command line asks."""
    from facefuse.service.runner import Worker

    return Worker.load(
        work_root,
        worker_id=worker_id,
        result_ttl_s=args.result_ttl * 3600.0,
        max_pixels=args.max_pixels,
        max_video_frames=args.max_video_frames,
        video_workers=args.video_workers,
        segment_frames=args.segment_frames,
        models_dir=args.models_dir,
        verify_models=not args.no_verify,
    )


def cmd_worker(args: argparse.Namespace) -> int:
    numbers = (args.concurrency, args.video_workers, args.max_pixels, args.max_video_frames)
    if min(numbers) < 1 or args.segment_frames < 0 or not args.result_ttl > 0:
        raise ScaleConfigError(
            "--concurrency, --video-workers, --max-pixels, --max-video-frames must be >= 1; "
            "--segment-frames >= 0; --result-ttl > 0"
        )
    _require_scale_packages()
    from facefuse.service.celery_queue import check_broker
    from facefuse.service.celery_worker import JobRunner, start_worker
    from facefuse.service.redis_store import RedisJobStore

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = celery_settings(args)
    check_broker(settings.broker)
    storage = open_storage(args.storage)
    work_root = Path(args.work_dir) if args.work_dir else None
    try:
        work_root = work_root or default_work_dir(storage)
        work_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f"--work-dir {work_root}" if work_root else "the default work folder"
        raise StorageUnreachable(f"{where}: cannot create ({exc.strerror or exc})") from None

    runner = JobRunner(
        settings=settings,
        store=RedisJobStore(settings.broker, lease_s=settings.lease_s),
        storage=storage,
        load_worker=functools.partial(load_worker, args, work_root),
        node=f"{args.name}@{socket.gethostname()}",
    )
    code = start_worker(
        settings, runner, concurrency=args.concurrency, name=args.name, loglevel=args.log_level.upper()
    )
    return ExitCode.OK if code == 0 else code
