"""`facefuse serve`: the REST API with an in-process worker and a SQLite job store."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from facefuse.errors import ExitCode, FacefuseError, ServiceConfigError, ServiceStartError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from facefuse.cli import exit_codes_text
    from facefuse.cli_models import add_models_folder_arguments
    from facefuse.cli_worker import add_scale_arguments, add_service_arguments

    serve = sub.add_parser(
        "serve",
        help="run the REST API (and its job worker) on this machine",
        description=(
            "Serve the facefuse REST API: submit swap jobs by upload, poll them, download the labelled "
            "results. Jobs run in --workers worker processes (models loaded once each) and are kept "
            "in a SQLite file under --data-dir. Listening beyond localhost needs API keys."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  facefuse serve                                   http://127.0.0.1:8000, no keys needed\n"
            "  facefuse serve --data-dir /srv/ff --create-key alice   print a new key (stored hashed)\n"
            "  facefuse serve --host 0.0.0.0 --data-dir /srv/ff   keys required\n"
            "\n" + exit_codes_text()
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--data-dir",
        default="facefuse-data",
        metavar="DIR",
        help="jobs, uploads, results (default ./facefuse-data)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="job worker processes, each loading the models once (default 1)",
    )
    serve.add_argument(
        "--worker-threads",
        action="store_true",
        help="run the job workers as threads in the API process instead (less memory, slower)",
    )
    serve.add_argument(
        "--create-key", metavar="NAME", help="create an API key named NAME, print it once, exit"
    )
    serve.add_argument(
        "--require-keys",
        action="store_true",
        help="require API keys even on localhost (default: only beyond it)",
    )
    serve.add_argument(
        "--rate-limit", type=float, default=600.0, metavar="PER_MIN", help="requests/min per key; 0 off"
    )
    serve.add_argument(
        "--rate-burst", type=int, default=60, metavar="N", help="requests a key may make at once"
    )
    serve.add_argument(
        "--max-active-jobs", type=int, default=8, metavar="N", help="queued+running jobs per key; 0 off"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=100.0, metavar="MB", help="largest request body"
    )
    serve.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        metavar="N",
        help="largest image / video frame, in pixels",
    )
    serve.add_argument(
        "--max-sync-pixels", type=int, default=4_000_000, metavar="N", help="largest target for POST /v1/swap"
    )
    serve.add_argument(
        "--record-ttl",
        type=float,
        default=168.0,
        metavar="HOURS",
        help="an expired job's record answers 410 this long after its files went, then 404 (default 168)",
    )
    serve.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls from ORIGIN"
    )
    add_models_folder_arguments(serve, "learned models offered to jobs: those installed here")
    add_service_arguments(serve)
    serve.add_argument(
        "--backend",
        choices=["local", "celery"],
        default="local",
        help="local: jobs run in --workers processes on this machine (default); "
        "celery: jobs go to `facefuse worker`s over Redis",
    )
    from facefuse.service.live_ws import add_arguments as add_live_arguments

    add_live_arguments(serve)

    add_scale_arguments(serve, storage_required=False)
    serve.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace):
    from facefuse.service.settings import Settings, load_keys

    data_dir = Path(args.data_dir)
    return Settings(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        workers=args.workers,
        worker_processes=not args.worker_threads,
        api_keys=load_keys(data_dir),
        require_keys=True if args.require_keys else None,
        rate_limit_per_minute=args.rate_limit,
        rate_burst=args.rate_burst,
        max_active_jobs=args.max_active_jobs,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_sync_pixels=args.max_sync_pixels,
        result_ttl_s=args.result_ttl * 3600.0,
        record_ttl_s=args.record_ttl * 3600.0,
        cors_origins=list(args.cors_origin),
        models_dir=args.models_dir,
        verify_models=not args.no_verify,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from facefuse.service.settings import add_key

    if args.create_key:
        key = add_key(Path(args.data_dir), args.create_key)
        print(key)
        print(
            f"key {args.create_key!r} stored (hashed) in {args.data_dir}; it is shown only this once",
            file=sys.stderr,
        )
        return ExitCode.OK
    settings = settings_from_args(args)
    settings.check()
    if not 1 <= args.port <= 65535:
        raise ServiceConfigError(f"--port {args.port}: must be 1..65535")
    # Bound before anything loads: a busy port is said at once, not after the models load.
    sock = bind(args.host, args.port)
    import uvicorn

    from facefuse.service.app import create_app, start_services
    from facefuse.service.live_ws import settings_from_args as live_settings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.backend == "celery":
        from facefuse.cli_worker import celery_backend

        app = create_app(settings, *celery_backend(args, settings.data_dir), live=live_settings(args))
    else:
        app = create_app(settings, live=live_settings(args))
    try:
        start_services(app)
    except FacefuseError:
        raise
    except Exception as exc:  # a model that will not load, an unwritable signing key folder, ...
        raise ServiceStartError(f"start-up failed: {exc.__class__.__name__}: {exc}") from None
    print(
        f"facefuse: serving on http://{args.host}:{args.port} (data in {settings.data_dir})", file=sys.stderr
    )
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=args.log_level.lower(), access_log=False, lifespan="on")
    )
    server.run(sockets=[sock])
    if not server.started:
        raise ServiceStartError("start-up failed (see the log above)")
    return ExitCode.OK


def bind(host: str, port: int) -> socket.socket:
    """The listening socket for uvicorn (SERVICE_START when the port is taken or not ours to use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServiceConfigError(f"--host {host}: cannot be resolved ({exc.strerror or exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServiceStartError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock
