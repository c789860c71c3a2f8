"""The HTTP API (FastAPI). `create_app(settings, store, storage, queue)`; see docs/service-api.md.

Every error is `{"error": {"code", "message"}, "request_id"}` with the right 4xx. Uploads are checked
(size from the body as it streams, type from the bytes, pixels from the header) before anything is
stored, and stored under server-chosen keys only. Models load once at start-up: each worker's own,
plus one Pipeline here for the synchronous endpoints (/v1/faces, /v1/swap).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facefuse import __version__
from facefuse.analysis.select import Mode, Order, order_faces
from facefuse.errors import (
    EmptyVideo,
    FacefuseError,
    InputInvalid,
    NoMatch,
    NoSourceFace,
    NoTargetFace,
    NoVideoStream,
    TooManyPixels,
)
from facefuse.service.capabilities import Capabilities, Installed, capabilities
from facefuse.service.jobs import (
    ACTIVE,
    Job,
    JobKind,
    JobStatus,
    JobStore,
    SQLiteJobStore,
    new_job_id,
)
from facefuse.service.options import MAX_SOURCES, BadOptions, JobOptions, parse_options
from facefuse.service.queue import JobQueue, LocalQueue
from facefuse.service.runner import OUTPUT_MIME, error_code, input_prefix, job_prefix
from facefuse.service.settings import Settings
from facefuse.service.storage import DirectoryStorage, Storage
from facefuse.service.uploads import (
    IMAGE_TYPES,
    Staging,
    UnsupportedMedia,
    check_image,
    check_video,
    output_problem,
    sniff_file,
)

__all__ = ["Settings", "create_app"]

log = logging.getLogger("facefuse.service")
STATIC_DIR = Path(__file__).parent / "static"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(request: Request | None, code: str, message: str) -> dict[str, Any]:
    rid = getattr(request.state, "request_id", None) if request is not None else None
    return {"error": {"code": code, "message": message}, "request_id": rid or ""}


def error_response(request: Request, status: int, code: str, message: str, headers: dict | None = None):
    response = JSONResponse(error_body(request, code, message), status_code=status, headers=headers)
    rid = getattr(request.state, "request_id", None)
    if rid:
        response.headers["X-Request-ID"] = rid
    return response


HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def facefuse_status(exc: FacefuseError) -> int:
    """The HTTP status for an error found in what the client sent."""
    if isinstance(exc, UnsupportedMedia):
        return 415
    if isinstance(exc, TooManyPixels):
        return 413
    if isinstance(exc, InputInvalid | NoVideoStream | EmptyVideo | NoSourceFace | NoTargetFace | NoMatch):
        return 422
    return 500


# ---------------------------------------------------------------------------------------------
# Middleware: request id + access log, and the body size limit (before any parsing)
# ---------------------------------------------------------------------------------------------


class RequestContext:
    """Gives every request an id (X-Request-ID in and out) and logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Method, path, status, time: never bodies, never file contents.
            log.info(
                "request_id=%s %s %s -> %s %.1f ms",
                rid,
                scope.get("method"),
                scope.get("path"),
                status[0],
                1000 * (time.perf_counter() - t0),
            )


class BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so FastAPI's form parsing lets it through as a 413 (not a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over the limit of {max_bytes:,} bytes", {"Connection": "close"})


class BodyLimit:
    """413 for a body over the limit: from Content-Length before reading, else while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(scope, send)
            return
        seen = [0]
        started = [False]

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except BodyTooLarge:
            if not started[0]:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        rid = scope.get("state", {}).get("request_id", "")
        message = f"request body over the limit of {self.max_bytes:,} bytes"
        response = JSONResponse(
            {"error": {"code": "too_large", "message": message}, "request_id": rid},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, _drain_nothing, send)


async def _drain_nothing() -> Message:
    return {"type": "http.disconnect"}


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_name(host: str) -> str:
    """The name part of a Host header ("[::1]:8000" -> "::1", "Example.org:80" -> "example.org")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BrowserGuard:
    """Keeps other web pages out. Without keys every caller is the owner `local`, so a page from
    anywhere could post jobs through a visitor's browser (a multipart POST needs no preflight) and,
    by DNS rebinding, read them back. So: a keyless server answers only to loopback Host names (and
    its configured host), and /v1 refuses a foreign Origin or `Sec-Fetch-Site: cross-site` unless
    that origin is a configured --cors-origin. Clients that are not browsers send neither."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = LOOPBACK_NAMES | {settings.host.lower().strip("[]")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        problem = None
        if not self.settings.keys_needed and _host_name(host) not in self.hosts:
            problem = (400, "invalid_host", f"Host {host[:80]!r} is not this server's")
        elif scope.get("path", "").startswith("/v1/") and scope["type"] == "http":
            origin = headers.get(b"origin", b"").decode("latin-1") or None
            cross = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower() == "cross-site"
            if origin is not None:
                foreign = origin.split("://", 1)[-1] != host and origin not in self.settings.cors_origins
            else:
                foreign = cross
            if foreign:
                problem = (403, "forbidden_origin", "requests from other web pages are not allowed")
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4403, "reason": problem[2]})
        else:
            rid = scope.get("state", {}).get("request_id", "")
            status, code, message = problem
            response = JSONResponse(
                {"error": {"code": code, "message": message}, "request_id": rid},
                status_code=status,
                headers={"Connection": "close"},
            )
            await response(scope, _drain_nothing, send)


# ---------------------------------------------------------------------------------------------
# Keys, rate limits
# ---------------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, owner: str) -> float:
        """0 if allowed, else the seconds until a request would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(owner, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                return 0.0
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / self.rate


class Services:
    """What the endpoints share: held on app.state, never in module globals."""

    def __init__(self, settings: Settings, store: JobStore, storage: Storage, queue: JobQueue) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.queue = queue
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_burst)
        self.submit_lock = threading.Lock()
        self.pipeline: Any = None  # for /v1/faces and /v1/swap; loaded at start-up
        self.pipelines: Any = None  # the same, plus learned model choices (service.capabilities)
        self.pipeline_lock = threading.Lock()
        self.signer: Any = None
        self.stop = threading.Event()
        self.started = False
        self.staging_root = settings.data_dir / "tmp"


def services(request: Request) -> Services:
    return request.app.state.services


def caller(
    request: Request,
    x_api_key: Annotated[
        str | None, Header(description="API key (required unless a localhost server has none)")
    ] = None,
) -> str:
    """The owner name for this request's key; 401 without a valid key, 429 over the rate limit."""
    svc = services(request)
    owner = svc.settings.owner_for(x_api_key)
    if owner is None:
        message = "missing X-API-Key header" if x_api_key is None else "invalid API key"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "X-API-Key"})
    wait = svc.limiter.take(owner)
    if wait > 0:
        retry = max(1, int(wait + 0.999))
        raise ApiError(
            429, "rate_limited", f"rate limit exceeded; retry in {retry} s", {"Retry-After": str(retry)}
        )
    return owner


Owner = Annotated[str, Depends(caller)]


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    queue: JobQueue | None = None,
    *,
    pipeline: Any = None,
    live: Any = None,
) -> FastAPI:
    """The service. Defaults: SQLite store, DirectoryStorage and a LocalQueue under settings.data_dir.

    `pipeline` (optional) is the Pipeline for the synchronous endpoints; one is loaded at start-up
    otherwise. `live`: the Live WebSocket's limits (service.live_ws.LiveWebSettings).
    """
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    default_files = store is None and storage is None
    store = store or SQLiteJobStore(settings.data_dir / "jobs.sqlite3")
    storage = storage or DirectoryStorage(settings.data_dir / "files")
    if queue is None and settings.worker_processes and default_files:
        queue = _process_queue(settings)
    queue = queue or LocalQueue(
        store,
        storage,
        settings.data_dir / "work",
        workers=settings.workers,
        result_ttl_s=settings.result_ttl_s,
        max_pixels=settings.max_pixels,
        max_video_frames=settings.max_video_frames,
        video_workers=settings.video_workers,
        models_dir=settings.models_dir,
        verify_models=settings.verify_models,
    )
    svc = Services(settings, store, storage, queue)
    svc.pipeline = pipeline

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        if not svc.started:  # `facefuse serve` starts them before listening (start_services)
            await run_in_threadpool(_start, svc)
        try:
            yield
        finally:
            await run_in_threadpool(_stop, svc)

    app = FastAPI(
        title="facefuse",
        version=__version__,
        description="Face swapping as a service. Every output is labelled AI-generated (metadata + C2PA).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.services = svc
    _install_error_handlers(app)
    _add_routes(app)
    from facefuse.service import live_ws

    live_ws.register(app, svc, live)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BrowserGuard, settings=settings)
    app.add_middleware(RequestContext)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def _process_queue(settings: Settings) -> JobQueue:
    """Worker processes over the default store and storage (each opens its own, by path)."""
    from functools import partial

    from facefuse.service.procqueue import ProcessQueue, WorkerSpec, threads_per_worker

    spec = WorkerSpec(
        open_store=partial(SQLiteJobStore, settings.data_dir / "jobs.sqlite3"),
        open_storage=partial(DirectoryStorage, settings.data_dir / "files"),
        work_root=settings.data_dir / "work",
        worker_kwargs={
            "result_ttl_s": settings.result_ttl_s,
            "max_pixels": settings.max_pixels,
            "max_video_frames": settings.max_video_frames,
            "video_workers": settings.video_workers,
            "models_dir": settings.models_dir,
            "verify_models": settings.verify_models,
            "model_threads": threads_per_worker(settings.workers),
        },
        threads=threads_per_worker(settings.workers),
        log_level=logging.getLogger().getEffectiveLevel(),
    )
    return ProcessQueue(SQLiteJobStore(settings.data_dir / "jobs.sqlite3"), spec, workers=settings.workers)


def start_services(app: FastAPI) -> None:
    """Load the models and start the workers now rather than in the server's lifespan, so a
    failure is an exception here (one line and an exit code) instead of a logged traceback."""
    _start(app.state.services)


def _start(svc: Services) -> None:
    from facefuse.analysis import DetectorSettings
    from facefuse.media.labels import SigningIdentity
    from facefuse.pipeline import Pipeline

    svc.staging_root.mkdir(parents=True, exist_ok=True)
    for stale in svc.staging_root.glob("upload-*"):  # left by a killed server
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
    if svc.pipeline is None:
        svc.pipeline = Pipeline(detector=DetectorSettings(), max_pixels=svc.settings.max_pixels)
    svc.signer = SigningIdentity.load_or_create().signer()
    svc.queue.start()
    svc.stop.clear()
    threading.Thread(target=_expiry_loop, args=(svc,), name="facefuse-expiry", daemon=True).start()
    svc.started = True
    log.info("facefuse service ready (backend %s)", svc.queue.backend)


def _pipeline(svc: Services, options: JobOptions | None = None) -> Any:
    """The sync endpoints' Pipeline for `options` (the built-in one is loaded at start-up; here too
    for an app used without its lifespan)."""
    if svc.pipeline is None:
        from facefuse.pipeline import Pipeline

        svc.pipeline = Pipeline(max_pixels=svc.settings.max_pixels)
    if options is None:
        return svc.pipeline
    if svc.pipelines is None:
        from facefuse.service.capabilities import Pipelines

        svc.pipelines = Pipelines(
            svc.pipeline,
            models_dir=svc.settings.models_dir,
            verify=svc.settings.verify_models,
            max_pixels=svc.settings.max_pixels,
        )
    return svc.pipelines.get(options)


def _stop(svc: Services) -> None:
    svc.started = False
    svc.stop.set()
    svc.queue.stop()
    if svc.signer is not None:
        with contextlib.suppress(Exception):
            svc.signer.close()
        svc.signer = None


def _expiry_loop(svc: Services) -> None:
    from facefuse.service.runner import expire_results

    while not svc.stop.wait(svc.settings.expiry_interval_s):
        try:
            gone = expire_results(svc.store, svc.storage)
            if gone:
                log.info("expired %d job result(s)", len(gone))
            forgotten = svc.store.forget_expired(time.time() - svc.settings.record_ttl_s)
            if forgotten:
                log.info("deleted %d expired job record(s)", len(forgotten))
        except Exception:
            log.exception("expiry pass failed")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI/Starlette's 400 is a body that cannot be parsed (malformed multipart, no
            # boundary): a bad request like any other invalid form, so the documented 422.
            detail = exc.detail if isinstance(exc.detail, str) else "malformed request body"
            return error_response(request, 422, "invalid_request", f"malformed request body ({detail})")
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(request, exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(request, 422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(FacefuseError)
    async def facefuse_error(request: Request, exc: FacefuseError) -> JSONResponse:
        status = facefuse_status(exc)
        if status == 500:
            log.error("request_id=%s internal error: %s", getattr(request.state, "request_id", ""), exc)
            return error_response(request, 500, "internal", "internal error")
        message = str(exc).replace(" (raise --max-pixels if the file is trusted)", "")
        return error_response(request, status, error_code(exc), message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request_id=%s internal error", getattr(request.state, "request_id", ""))
        return error_response(request, 500, "internal", "internal error")


ERRORS = {
    401: {"description": "missing or invalid API key"},
    413: {"description": "upload or image too large"},
    415: {"description": "not a supported image/video (sniffed from the bytes)"},
    422: {"description": "bad options, unusable media, or a malformed or incomplete form"},
    429: {"description": "rate limit or job quota exceeded (Retry-After)"},
    503: {"description": "the job queue cannot be reached (Retry-After)"},
}


AUTH_ERRORS = {k: ERRORS[k] for k in (401, 429)}
NOT_FOUND = {"description": "no such job (or not yours)"}


def _add_routes(app: FastAPI) -> None:
    @app.get("/v1/health", tags=["service"])
    def health(request: Request) -> dict[str, Any]:
        svc = services(request)
        return {
            "status": "ok" if svc.queue.ready() else "starting",
            "version": __version__,
            "backend": svc.queue.backend,
        }

    @app.post("/v1/faces", tags=["swap"], responses={k: ERRORS[k] for k in (401, 413, 415, 422, 429)})
    def faces(request: Request, owner: Owner, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """Every face in an image, largest first (indexes for `reference_face_index`)."""
        svc = services(request)
        checked = check_image(image.file, "image", svc.settings.max_pixels)
        with svc.pipeline_lock:
            found = _pipeline(svc).analyser.analyse(checked.rgb, largest_only=False)
        ordered = order_faces(found, Order.LARGE_SMALL)
        height, width = checked.rgb.shape[:2]
        return {
            "width": width,
            "height": height,
            "faces": [
                {
                    "index": i,
                    "box": [round(float(v), 1) for v in face.box],
                    "score": round(float(face.score), 3),
                    "pose": {
                        "yaw": round(float(face.pose.yaw), 1),
                        "pitch": round(float(face.pose.pitch), 1),
                        "roll": round(float(face.pose.roll), 1),
                    },
                }
                for i, face in enumerate(ordered)
            ],
        }

    @app.post(
        "/v1/jobs",
        status_code=202,
        tags=["jobs"],
        responses={k: ERRORS[k] for k in (401, 413, 415, 422, 429, 503)},
    )
    def submit(
        request: Request,
        owner: Owner,
        source: Annotated[list[UploadFile], File(description="photo(s) of the person to swap in")],
        target: Annotated[UploadFile, File(description="image or video whose faces are replaced")],
        reference: Annotated[
            UploadFile | None, File(description="photo of the target person to replace")
        ] = None,
        options: Annotated[str | None, Form(description="JSON object of job options")] = None,
    ) -> dict[str, Any]:
        """Queue a swap job; poll GET /v1/jobs/{id} and download GET /v1/jobs/{id}/result."""
        svc = services(request)
        opts = _options(options, svc.settings)
        if len(source) > MAX_SOURCES:
            raise ApiError(422, "invalid_request", f"at most {MAX_SOURCES} source photos")
        _check_quota(svc, owner)  # early, before the uploads are read and stored
        job = _accept(svc, owner, opts, source, target, reference)
        with svc.submit_lock:  # count and create as one step, so parallel submits cannot all pass
            try:
                _check_quota(svc, owner)
            except ApiError:
                svc.storage.delete(job_prefix(job.id))
                raise
            svc.store.create(job)
        try:
            svc.queue.submit(job.id)
        except Exception:
            # Never left queued for ever (counting against the quota): failed, inputs gone.
            log.exception("job %s: could not be queued", job.id)
            now = time.time()
            svc.store.update(
                job.id,
                expect=[JobStatus.QUEUED],
                status=JobStatus.FAILED,
                finished_at=now,
                expires_at=now + svc.settings.result_ttl_s,
                error={"code": "internal", "message": "the job could not be queued"},
            )
            svc.storage.delete(job_prefix(job.id))
            raise ApiError(
                503, "unavailable", "the job queue is not reachable; try again", {"Retry-After": "5"}
            ) from None
        return job.public(None)

    @app.get("/v1/capabilities", tags=["service"], responses=AUTH_ERRORS, response_model=Capabilities)
    def get_capabilities(request: Request, owner: Owner) -> Capabilities:
        """What this server offers in job options (learned models only where their files are
        installed), and its limits. The web page builds its choices from this."""
        settings = services(request).settings
        return capabilities(settings, Installed.scan(settings.models_dir))

    @app.get("/v1/jobs", tags=["jobs"], responses=AUTH_ERRORS)
    def list_jobs(
        request: Request, owner: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 50
    ) -> dict[str, Any]:
        svc = services(request)
        return {"jobs": [_public(request, j) for j in svc.store.list(owner, limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses={**AUTH_ERRORS, 404: NOT_FOUND})
    def get_job(request: Request, owner: Owner, job_id: str) -> dict[str, Any]:
        return _public(request, _own_job(request, owner, job_id))

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        response_class=Response,
        responses={
            200: {
                "description": "the labelled output file",
                "content": {m: {} for m in OUTPUT_MIME.values()},
            },
            **AUTH_ERRORS,
            404: NOT_FOUND,
            409: {"description": "not done"},
            410: {"description": "expired and deleted"},
        },
    )
    def result(request: Request, owner: Owner, job_id: str) -> Response:
        svc = services(request)
        job = _own_job(request, owner, job_id)
        if job.status is JobStatus.EXPIRED:
            raise ApiError(410, "expired", "the result has expired and was deleted")
        if job.status is not JobStatus.DONE or not job.output or not svc.storage.exists(job.output):
            raise ApiError(409, "not_done", f"the job is {job.status.value}; no result to download")
        fmt = job.output.rsplit(".", 1)[-1]
        headers = {"Content-Disposition": f'attachment; filename="facefuse-{job.id[:12]}.{fmt}"'}
        return _stream(svc.storage, job.output, OUTPUT_MIME[fmt], headers)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], responses={**AUTH_ERRORS, 404: NOT_FOUND})
    def cancel(request: Request, owner: Owner, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; for a finished one, delete its files and record."""
        svc = services(request)
        job = _own_job(request, owner, job_id)
        now = time.time()
        if job.status in ACTIVE and svc.store.update(
            job.id, expect=ACTIVE, status=JobStatus.CANCELLED, finished_at=now, expires_at=now
        ):
            svc.queue.cancel(job.id)
            if job.status is JobStatus.QUEUED:
                svc.storage.delete(job_prefix(job.id))
            return {"id": job.id, "status": JobStatus.CANCELLED.value}
        # Finished (or it finished just now): the owner wants it gone.
        svc.storage.delete(job_prefix(job.id))
        svc.store.delete(job.id)
        return {"id": job.id, "status": "deleted"}

    @app.post(
        "/v1/swap",
        tags=["swap"],
        response_class=Response,
        responses={
            200: {
                "description": "the labelled image",
                "content": {m: {} for m in ("image/png", "image/jpeg", "image/webp")},
            },
            **{k: ERRORS[k] for k in (401, 413, 415, 422, 429)},
        },
    )
    def swap(
        request: Request,
        owner: Owner,
        source: Annotated[list[UploadFile], File(description="photo(s) of the person to swap in")],
        target: Annotated[UploadFile, File(description="image whose faces are replaced")],
        reference: Annotated[
            UploadFile | None, File(description="photo of the target person to replace")
        ] = None,
        options: Annotated[str | None, Form(description="JSON object of job options")] = None,
    ) -> Response:
        """Swap a small image and answer with the labelled result directly."""
        svc = services(request)
        return _swap_now(svc, _options(options, svc.settings), source, target, reference)


def _check_quota(svc: Services, owner: str) -> None:
    limit = svc.settings.max_active_jobs
    if limit and svc.store.count_active(owner) >= limit:
        raise ApiError(
            429,
            "quota_exceeded",
            f"{limit} jobs are queued or running for this key; wait for one",
            {"Retry-After": "5"},
        )


def _options(text: str | None, settings: Settings) -> JobOptions:
    """The job options, parsed and checked against what this server has installed (else 422)."""
    from facefuse.service.capabilities import Installed, unavailable

    try:
        opts = parse_options(text)
    except BadOptions as exc:
        raise ApiError(422, "invalid_options", str(exc)) from None
    problem = unavailable(opts, Installed.scan(settings.models_dir))
    if problem:
        raise ApiError(422, "invalid_options", problem)
    return opts


RESULT_CHUNK = 1024 * 1024


def _stream(storage: Storage, key: str, media_type: str, headers: dict[str, str]) -> Response:
    """A result file sent in pieces (a video result can be gigabytes; never held in memory)."""
    if isinstance(storage, DirectoryStorage):
        # Sent from the open file (sendfile where the server can); Content-Length and ranges too.
        return FileResponse(storage.path(key), media_type=media_type, headers=headers)
    size = storage.size(key)
    fh = storage.open(key)

    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(RESULT_CHUNK):
                yield block

    return StreamingResponse(
        chunks(), media_type=media_type, headers={**headers, "Content-Length": str(size)}
    )


def _own_job(request: Request, owner: str, job_id: str) -> Job:
    job = services(request).store.get(job_id) if len(job_id) <= 64 else None
    if job is None or job.owner != owner:  # another owner's job does not exist, as far as you know
        raise ApiError(404, "not_found", "no such job")
    return job


def _public(request: Request, job: Job) -> dict[str, Any]:
    return job.public(f"/v1/jobs/{job.id}/result")


def _check_names(uploads: list[UploadFile]) -> None:
    """Refuse file names that try to name a place. Names are never used (storage keys are the
    server's), but a client sending one is misbehaving, and saying so beats silently ignoring it."""
    for upload in uploads:
        name = upload.filename or ""
        parts = re.split(r"[/\\]", name)
        if len(name) > 255 or "\x00" in name or len(parts) > 1 or ".." in parts:
            raise ApiError(
                422, "invalid_filename", f"file name {name[:80]!r}: must be a plain name, not a path"
            )


def _check_selection(opts: JobOptions, reference: UploadFile | None) -> None:
    if opts.mode is Mode.REFERENCE and reference is None and opts.reference_face_index is None:
        raise ApiError(
            422, "invalid_options", "mode 'reference' needs a reference photo or reference_face_index"
        )


def _accept(
    svc: Services,
    owner: str,
    opts: JobOptions,
    sources: list[UploadFile],
    target: UploadFile,
    reference: UploadFile | None,
) -> Job:
    """Check every upload, then store them under server keys; nothing is left behind on error."""
    settings = svc.settings
    _check_names([*sources, target, *([reference] if reference else [])])
    _check_selection(opts, reference)
    kind = sniff_file(target.file)
    is_video = kind is not None and kind not in IMAGE_TYPES
    if is_video and opts.output_format not in (None, "mp4"):
        raise ApiError(
            422, "invalid_options", f"output_format {opts.output_format!r}: a video target gives mp4"
        )
    if not is_video and (opts.output_format == "mp4" or opts.video_only_given()):
        names = ", ".join(opts.video_only_given() or ["output_format"])
        raise ApiError(422, "invalid_options", f"{names}: only for video targets")
    job_id = new_job_id()
    prefix = input_prefix(job_id)
    # The worker decodes every image fully; here a cheap but strict check is enough to refuse bad
    # files before anything is stored (the API process's time is every client's latency).
    checked_sources = [
        check_image(s.file, f"source {i + 1}", settings.max_pixels, decode=False)
        for i, s in enumerate(sources)
    ]
    checked_ref = (
        check_image(reference.file, "reference", settings.max_pixels, decode=False) if reference else None
    )
    with Staging(svc.staging_root) as staging:
        inputs: dict[str, Any] = {"sources": [], "reference": None}
        if is_video:
            staged = staging.save(target.file, f"target.{kind}")
            try:
                info = check_video(staged, settings.max_pixels, settings.max_video_frames)
                problem = output_problem(info, opts, settings.max_pixels, settings.max_video_frames)
            except FacefuseError as exc:  # name the role, not the server's staging path
                raise type(exc)(str(exc).replace(str(staged), "target"), exc.exit_code) from None
            if problem:
                raise ApiError(422, "invalid_options", problem)
        else:
            checked_target = check_image(target.file, "target", settings.max_pixels, decode=False)
            kind = checked_target.kind
        try:
            for i, checked in enumerate(checked_sources):
                key = f"{prefix}/source-{i}.{checked.kind}"
                svc.storage.put(key, checked.data)
                inputs["sources"].append(key)
            if checked_ref is not None:
                inputs["reference"] = f"{prefix}/reference-0.{checked_ref.kind}"
                svc.storage.put(inputs["reference"], checked_ref.data)
            inputs["target"] = f"{prefix}/target.{kind}"
            if is_video:
                svc.storage.put_file(inputs["target"], staged)
            else:
                svc.storage.put(inputs["target"], checked_target.data)
        except BaseException:
            svc.storage.delete(job_prefix(job_id))
            raise
    return Job(
        id=job_id,
        owner=owner,
        kind=JobKind.VIDEO if is_video else JobKind.IMAGE,
        options=opts.model_dump(mode="json", exclude_defaults=True),
        inputs=inputs,
    )


def _swap_now(
    svc: Services,
    opts: JobOptions,
    sources: list[UploadFile],
    target: UploadFile,
    reference: UploadFile | None,
) -> Response:
    from facefuse.media import write_image
    from facefuse.pipeline import check_result
    from facefuse.service.runner import _reference_from_target

    settings = svc.settings
    _check_names([*sources, target, *([reference] if reference else [])])
    _check_selection(opts, reference)
    if opts.output_format == "mp4" or opts.video_only_given():
        raise ApiError(422, "invalid_options", "/v1/swap takes images only; submit videos to /v1/jobs")
    if len(sources) > MAX_SOURCES:
        raise ApiError(422, "invalid_request", f"at most {MAX_SOURCES} source photos")
    limit = min(settings.max_pixels, settings.max_sync_pixels)
    checked_target = check_image(target.file, "target", limit)
    sources_rgb = [
        check_image(s.file, f"source {i + 1}", settings.max_pixels).rgb for i, s in enumerate(sources)
    ]
    ref_rgb = check_image(reference.file, "reference", settings.max_pixels).rgb if reference else None
    fmt = opts.output_format or ("jpg" if checked_target.kind == "jpg" else "png")
    selection = opts.selection()
    with svc.pipeline_lock:
        pipe = _pipeline(svc, opts)
        source = pipe.source(sources_rgb)
        ref = pipe.reference(ref_rgb) if ref_rgb is not None else None
        if ref is None and opts.reference_face_index is not None:
            ref = _reference_from_target(pipe, checked_target.rgb, opts.reference_face_index)
        result = pipe.run(source, checked_target.rgb, selection, reference=ref)
        check_result(result, selection, "target")
        with Staging(svc.staging_root) as staging:
            out = staging.path / f"result.{fmt}"
            write_image(
                result.image,
                out,
                source_type=pipe.swapper.digital_source_type,
                jpeg_quality=opts.jpeg_quality,
                signer=svc.signer,
            )
            data = out.read_bytes()
    return Response(
        data,
        media_type=OUTPUT_MIME[fmt],
        headers={
            "Content-Disposition": f'inline; filename="facefuse-swap.{fmt}"',
            "X-Faces-Swapped": str(result.faces_swapped),
        },
    )
