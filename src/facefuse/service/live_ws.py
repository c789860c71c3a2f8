"""Live swapping over a WebSocket (`/v1/live`): the web page's Live tab, or any client.

Protocol (one socket per browser session):

    client -> server  text   {"type": "hello", "key": "..."}   first, within `hello_timeout_s`
                      binary <8-byte little-endian float64 client time, ms><JPEG frame>
                      text   {"type": "add_source", "name": "me.jpg", "data": "<base64 photo>"}
                             {"type": "use_source", "index": 1}  {"type": "pause"}  {"type": "ping"}
    server -> client  text   {"type": "ready", ...}  {"type": "sources", "names": [...], "index": i}
                             {"type": "error", "code": ..., "message": ...}  {"type": "pong"}
                      binary <16-byte header: float64 client time, uint16 faces swapped,
                              int16 source index (-1: none), float32 processing ms><JPEG frame>

Why not one `LiveSession` per client: it forks a swap and a detector process per session. Forking
a server that runs an event loop and several threads is unsafe (a child inherits locks held by
threads that do not exist in it), and two processes per browser tab would multiply the server's
memory by its clients. Instead every web session shares the server's one loaded Pipeline (the
same as /v1/faces and /v1/swap, under the same lock: dlib's models are not thread-safe) and keeps
only its own small state: a FrameSwapper (tracker + smoothing), its prepared sources, and two
one-frame slots. A few hub threads (`threads`) take sessions round-robin, so each client gets
its share and one session's frames are processed in order; JPEG decode/encode run outside the
model lock, so one thread's coding overlaps another's face work. The threads start with the
first session and end with the last one.

Bounded memory: a frame that arrives while the previous one still waits replaces it (dropped), as
in live.py; a result that the client has not taken yet is replaced by a newer one (dropped). A
client that stops reading blocks only its own sender (the server's socket buffer is bounded), and
its results keep replacing each other. Frames are never logged or stored.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import itertools
import json
import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect

from facefuse.analysis.select import Selection
from facefuse.analysis.track import TrackerSettings
from facefuse.errors import FacefuseError
from facefuse.live import LatestSlot, resident_mb

log = logging.getLogger("facefuse.service.live")

FRAME_IN = struct.Struct("<d")  # client time (ms, the page's performance.now())
FRAME_OUT = struct.Struct("<dHhf")  # client time, faces swapped, source index, processing ms
THREAD_PREFIX = "facefuse-live-web"

# Close codes (4000-4999 are the application's own); the page shows the reason.
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429
CLOSE_BAD_ORIGIN = 4403
CLOSE_PROTOCOL = 4400
CLOSE_IDLE = 4408
CLOSE_STARTING = 1013  # "try again later": the models are still loading


@dataclass
class LiveWebSettings:
    """Limits of the Live WebSocket. 0 switches a count limit off."""

    max_sessions: int = 8  # on the whole server
    max_sessions_per_key: int = 2
    threads: int = 2  # hub threads shared by every session
    max_frame_bytes: int = 1024 * 1024  # one JPEG frame
    max_frame_pixels: int = 1920 * 1080
    max_source_bytes: int = 10 * 1024 * 1024  # a source photo, before base64
    max_sources: int = 10  # per session
    jpeg_quality: int = 80  # of the frames sent back
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0  # no message at all for this long: the socket is closed
    min_face: int = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`facefuse serve` options of the Live tab."""
    defaults = LiveWebSettings()
    parser.add_argument(
        "--live-sessions",
        type=int,
        default=defaults.max_sessions,
        metavar="N",
        help=f"live camera sessions on the server at once (default {defaults.max_sessions})",
    )
    parser.add_argument(
        "--live-sessions-per-key",
        type=int,
        default=defaults.max_sessions_per_key,
        metavar="N",
        help=f"live sessions per API key at once (default {defaults.max_sessions_per_key})",
    )
    parser.add_argument(
        "--live-threads",
        type=int,
        default=defaults.threads,
        metavar="N",
        help=f"threads that process live frames, shared by all sessions (default {defaults.threads})",
    )


def settings_from_args(args: argparse.Namespace) -> LiveWebSettings:
    return LiveWebSettings(
        max_sessions=args.live_sessions,
        max_sessions_per_key=args.live_sessions_per_key,
        threads=max(1, args.live_threads),
    )


class LiveLimit(Exception):
    """No room for another session (per key or on the server)."""


@dataclass
class InFrame:
    t_client: float  # ms, as the client sent it
    jpeg: bytes


@dataclass
class OutFrame:
    t_client: float
    jpeg: bytes
    faces_swapped: int
    source_index: int
    process_ms: float


@dataclass
class Command:
    kind: str  # "add" | "use" | "pause"
    name: str = ""
    data: bytes = b""
    index: int = 0


@dataclass
class SessionCounts:
    frames_in: int = 0
    frames_out: int = 0  # handed to the socket
    frames_dropped: int = 0  # replaced in a slot, or refused (too large, not a JPEG)
    frames_processed: int = 0


@dataclass
class WebSession:
    """One browser session's state. Only hub threads touch `swapper` and `identities`; only the
    socket's tasks touch the asyncio side."""

    id: str
    owner: str
    notify: Callable[[], None]  # wakes the socket's sender (thread-safe)
    reply: Callable[[dict[str, Any]], None]  # queues a JSON message to the client (thread-safe)
    inbox: LatestSlot[InFrame] = field(default_factory=LatestSlot)
    outbox: LatestSlot[OutFrame] = field(default_factory=LatestSlot)
    commands: queue.SimpleQueue[Command] = field(default_factory=queue.SimpleQueue)
    counts: SessionCounts = field(default_factory=SessionCounts)
    names: list[str] = field(default_factory=list)
    identities: list[Any] = field(default_factory=list)
    index: int = -1
    swapper: Any = None
    last_t: float = -1.0  # seconds, for the tracker's smoothing (frames must go forward)
    busy: bool = False  # a hub thread has it (one at a time: frames stay in order)
    closed: bool = False
    pending_commands: int = 0


class LiveHub:
    """Sessions and the threads that process them, sharing one Pipeline under `lock`."""

    def __init__(
        self, settings: LiveWebSettings, pipeline: Callable[[], Any], lock: threading.Lock, max_pixels: int
    ) -> None:
        self.settings = settings
        self._pipeline = pipeline
        self._model_lock = lock
        self._max_pixels = max_pixels
        self._cond = threading.Condition()
        self._sessions: dict[str, WebSession] = {}
        self._order = itertools.count()
        self._cursor = 0
        self._running = 0  # hub threads that have not decided to end
        self.totals = SessionCounts()

    # -- sessions -----------------------------------------------------------------------------

    def open(self, owner: str, notify: Callable[[], None], reply: Callable[[dict], None]) -> WebSession:
        st = self.settings
        with self._cond:
            if st.max_sessions and len(self._sessions) >= st.max_sessions:
                raise LiveLimit(f"the server has {st.max_sessions} live sessions open; try again later")
            mine = sum(1 for s in self._sessions.values() if s.owner == owner)
            if st.max_sessions_per_key and mine >= st.max_sessions_per_key:
                raise LiveLimit(f"{mine} live sessions are open for this key (the limit); close one first")
            session = WebSession(uuid.uuid4().hex[:16], owner, notify, reply)
            self._sessions[session.id] = session
            while self._running < st.threads:
                name = f"{THREAD_PREFIX}-{next(self._order)}"
                threading.Thread(target=self._run, name=name, daemon=True).start()
                self._running += 1
        return session

    def close(self, session: WebSession) -> None:
        """Forget the session: its slots close, its state goes with the last reference; the hub
        threads end once no session is left."""
        with self._cond:
            session.closed = True
            self._sessions.pop(session.id, None)
            self._merge(session)
            self._cond.notify_all()
        session.inbox.close()
        session.outbox.close()
        while session.outbox.take(0) is not None:
            pass

    def _merge(self, session: WebSession) -> None:
        for name, value in asdict(session.counts).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        session.counts = SessionCounts()

    def push(self, session: WebSession, frame: InFrame) -> None:
        with self._cond:
            session.counts.frames_in += 1
            if session.inbox.put(frame) is not None:
                session.counts.frames_dropped += 1
            self._cond.notify()

    def refused(self, session: WebSession) -> None:
        with self._cond:
            session.counts.frames_in += 1
            session.counts.frames_dropped += 1

    def command(self, session: WebSession, command: Command) -> bool:
        """Queue a command for the session's next turn; False when too many are waiting."""
        with self._cond:
            if session.pending_commands >= 4:
                return False
            session.pending_commands += 1
            session.commands.put(command)
            self._cond.notify()
            return True

    def sent(self, session: WebSession) -> None:
        with self._cond:
            session.counts.frames_out += 1

    def stats(self, owner: str | None = None) -> dict[str, Any]:
        with self._cond:
            sessions = list(self._sessions.values())
            totals = asdict(self.totals)
            for s in sessions:
                for name, value in asdict(s.counts).items():
                    totals[name] += value
        # Threads that still exist, not the hub's own count: what a leak would leave behind.
        threads = sum(1 for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX))
        return {
            "sessions": len(sessions),
            "your_sessions": sum(1 for s in sessions if s.owner == owner),
            "threads": threads,
            # Frames held by the server right now: at most one waiting and one unsent per session.
            "frames_held": sum(int(s.inbox.peek_full()) + int(s.outbox.peek_full()) for s in sessions),
            "rss_mb": resident_mb([os.getpid()]),
            "limits": {
                "max_sessions": self.settings.max_sessions,
                "max_sessions_per_key": self.settings.max_sessions_per_key,
                "max_frame_bytes": self.settings.max_frame_bytes,
                "max_frame_pixels": self.settings.max_frame_pixels,
            },
            **totals,
        }

    def shutdown(self) -> None:
        for session in list(self._sessions.values()):
            self.close(session)

    # -- the hub threads ----------------------------------------------------------------------

    def _next(self) -> WebSession | None:
        """A session with work that no other thread has, round-robin; None once no session is left.
        Called with the condition held."""
        while True:
            sessions = list(self._sessions.values())
            if not sessions:
                self._running -= 1
                return None
            n = len(sessions)
            for k in range(n):
                session = sessions[(self._cursor + k) % n]
                if not session.busy and (session.pending_commands or session.inbox.peek_full()):
                    self._cursor = (self._cursor + k + 1) % n
                    session.busy = True
                    return session
            self._cond.wait(1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                session = self._next()
                if session is None:
                    return
            try:
                self._turn(session)
            except Exception:  # one session's failure must not end the thread the others share
                log.exception("live session %s: frame failed", session.id)
                session.reply({"type": "error", "code": "internal", "message": "internal error"})
            finally:
                with self._cond:
                    session.busy = False
                    self._cond.notify_all()

    def _turn(self, session: WebSession) -> None:
        while True:
            try:
                command = session.commands.get_nowait()
            except queue.Empty:
                break
            with self._cond:
                session.pending_commands -= 1
            self._apply(session, command)
        frame = session.inbox.take(0)
        if frame is None or session.closed:
            return
        out = self._process(session, frame)
        if out is None or session.closed:
            return
        with self._cond:
            session.counts.frames_processed += 1
            if session.outbox.put(out) is not None:
                session.counts.frames_dropped += 1
        session.notify()

    def _process(self, session: WebSession, frame: InFrame) -> OutFrame | None:
        t0 = time.perf_counter()
        try:
            rgb = decode_jpeg(frame.jpeg, self.settings.max_frame_pixels)
        except FacefuseError as exc:
            with self._cond:
                session.counts.frames_dropped += 1
            session.reply({"type": "error", "code": "input_invalid", "message": str(exc)})
            return None
        swapped = 0
        if session.swapper is not None:
            t = max(frame.t_client / 1000.0, session.last_t + 1e-3)
            session.last_t = t
            with self._model_lock:
                result = session.swapper.process(rgb, t)
            swapped = result.faces_swapped
            data = encode_jpeg(result.image, self.settings.jpeg_quality) if swapped else frame.jpeg
        else:
            data = frame.jpeg  # no source yet: the frame goes back as it came
        return OutFrame(frame.t_client, data, swapped, session.index, 1000 * (time.perf_counter() - t0))

    def _apply(self, session: WebSession, command: Command) -> None:
        try:
            if command.kind == "add":
                self._add_source(session, command)
            elif command.kind == "use":
                if not 0 <= command.index < len(session.identities):
                    raise FacefuseError(f"no source {command.index}: there are {len(session.identities)}")
                self._use(session, command.index)
            elif command.kind == "pause" and session.swapper is not None:
                with self._model_lock:
                    session.swapper.reset()  # a resumed stream starts with fresh tracks
                return
        except FacefuseError as exc:
            from facefuse.service.runner import error_code

            session.reply({"type": "error", "code": error_code(exc), "message": str(exc)})
            return
        session.reply({"type": "sources", "names": list(session.names), "index": session.index})

    def _add_source(self, session: WebSession, command: Command) -> None:
        from facefuse.service.uploads import check_image

        if len(session.identities) >= self.settings.max_sources:
            raise FacefuseError(f"at most {self.settings.max_sources} sources per live session")
        checked = check_image(io.BytesIO(command.data), "source photo", self._max_pixels)
        with self._model_lock:
            identity = self._pipeline().source(checked.rgb)
        session.identities.append(identity)
        session.names.append(command.name)
        self._use(session, len(session.identities) - 1)

    def _use(self, session: WebSession, index: int) -> None:
        from facefuse.stream import FrameSwapper

        identity = session.identities[index]
        with self._model_lock:
            if session.swapper is None:
                tracker = TrackerSettings(min_face=self.settings.min_face)
                session.swapper = FrameSwapper(self._pipeline(), identity, Selection(), tracker=tracker)
            else:
                session.swapper.set_source(identity)  # tracks are kept: the change shows at once
        session.index = index


def decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray:
    """A client's JPEG frame as RGB; the size is checked from the header before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"\xff\xd8\xff"):
        raise FacefuseError("a frame must be a JPEG image")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            if im.width * im.height > max_pixels:
                raise FacefuseError(
                    f"a {im.width}x{im.height} frame is over the limit of {max_pixels:,} pixels"
                )
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise FacefuseError(f"an unreadable JPEG frame ({type(exc).__name__})") from None


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The endpoints
# ---------------------------------------------------------------------------------------------


def register(app: FastAPI, svc: Any, settings: LiveWebSettings | None = None) -> LiveHub:
    """Add `/v1/live` (WebSocket) and `GET /v1/live/stats` to the app; the hub goes on app.state."""
    from facefuse.service import app as service_app

    settings = settings or LiveWebSettings()
    hub = LiveHub(settings, lambda: service_app._pipeline(svc), svc.pipeline_lock, svc.settings.max_pixels)
    app.state.live_hub = hub

    @app.get("/v1/live/stats", tags=["live"], responses=service_app.AUTH_ERRORS)
    def live_stats(request: Request, owner: str = Depends(service_app.caller)) -> dict[str, Any]:
        """Live sessions open, hub threads running, frame counts, and this process's memory."""
        return hub.stats(owner)

    @app.websocket("/v1/live")
    async def live(ws: WebSocket) -> None:
        await _serve_socket(ws, svc, hub)

    return hub


def _origin_allowed(ws: WebSocket, allowed: list[str]) -> bool:
    """Browsers send Origin and let any page open a socket anywhere (no CORS for WebSockets), so
    a page from elsewhere could use this server through a visitor's browser: only this server's
    own page and the --cors-origin ones may. Clients that are not browsers send no Origin."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    host = ws.headers.get("host", "")
    return origin in allowed or origin.split("://", 1)[-1] == host


async def _serve_socket(ws: WebSocket, svc: Any, hub: LiveHub) -> None:
    st = hub.settings
    if not _origin_allowed(ws, svc.settings.cors_origins):
        await ws.close(code=CLOSE_BAD_ORIGIN, reason="origin not allowed")
        return
    await ws.accept()

    async def refuse(code: int, error: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"type": "error", "code": error, "message": message}))
            await ws.close(code=code, reason=message[:120])

    try:
        hello = await asyncio.wait_for(ws.receive(), st.hello_timeout_s)
    except (TimeoutError, WebSocketDisconnect):
        await refuse(CLOSE_PROTOCOL, "invalid_request", 'send {"type": "hello", "key": ...} first')
        return
    message = _json(hello.get("text"))
    if message is None or message.get("type") != "hello":
        await refuse(CLOSE_PROTOCOL, "invalid_request", 'the first message must be {"type": "hello"}')
        return
    key = message.get("key") or None
    owner = svc.settings.owner_for(key if isinstance(key, str) else None)
    if owner is None:
        text = "an API key is needed" if key is None else "invalid API key"
        await refuse(CLOSE_UNAUTHORIZED, "unauthorized", text)
        return
    if svc.limiter.take(owner) > 0:
        await refuse(CLOSE_TOO_MANY, "rate_limited", "rate limit exceeded; try again shortly")
        return
    if svc.pipeline is None:
        await refuse(CLOSE_STARTING, "starting", "the server is still loading its models")
        return

    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=16)

    def queue_reply(msg: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a client that does not read misses some
            replies.put_nowait(msg)
        wake.set()

    def notify() -> None:
        loop.call_soon_threadsafe(wake.set)

    def reply(msg: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue_reply, msg)

    try:
        session = hub.open(owner, notify, reply)
    except LiveLimit as exc:
        await refuse(CLOSE_TOO_MANY, "too_many_sessions", str(exc))
        return
    log.info("live session %s opened (owner %s)", session.id, owner)
    sender = asyncio.create_task(_send_loop(ws, hub, session, wake, replies))
    try:
        queue_reply({"type": "ready", "session": session.id, "limits": hub.stats(owner)["limits"]})
        await _receive_loop(ws, hub, session, queue_reply)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        hub.close(session)
        log.info("live session %s closed", session.id)


async def _receive_loop(ws: WebSocket, hub: LiveHub, session: WebSession, reply: Callable) -> None:
    st = hub.settings
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), st.idle_timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_IDLE, reason="idle")
            return
        if msg["type"] == "websocket.disconnect":
            return
        data = msg.get("bytes")
        if data is not None:
            if len(data) > st.max_frame_bytes + FRAME_IN.size or len(data) <= FRAME_IN.size:
                hub.refused(session)
                reply({"type": "error", "code": "too_large", "message": _frame_size_message(len(data), st)})
                continue
            (t_client,) = FRAME_IN.unpack_from(data)
            hub.push(session, InFrame(float(t_client), data[FRAME_IN.size :]))
            continue
        control = _json(msg.get("text"))
        if control is None:
            reply({"type": "error", "code": "invalid_request", "message": "control messages are JSON"})
            continue
        error = _control(hub, session, control)
        if error is not None:
            reply({"type": "error", "code": "invalid_request", "message": error})


def _frame_size_message(n: int, st: LiveWebSettings) -> str:
    if n <= FRAME_IN.size:
        return "a frame is an 8-byte time followed by a JPEG image"
    return f"a {n:,}-byte frame is over the limit of {st.max_frame_bytes:,} bytes"


def _control(hub: LiveHub, session: WebSession, control: dict[str, Any]) -> str | None:
    """Queue a control message's command; an error message for a bad one."""
    kind = control.get("type")
    if kind == "ping":
        session.reply({"type": "pong"})
        return None
    if kind == "add_source":
        name = str(control.get("name") or "photo")[:80]
        try:
            data = base64.b64decode(str(control.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            return "add_source: data must be the photo in base64"
        if not data:
            return "add_source: no photo"
        if len(data) > hub.settings.max_source_bytes:
            return f"add_source: the photo is over the limit of {hub.settings.max_source_bytes:,} bytes"
        command = Command("add", name=name, data=data)
    elif kind == "use_source":
        index = control.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            return "use_source: index must be an integer"
        command = Command("use", index=index)
    elif kind == "pause":
        command = Command("pause")
    elif kind == "resume":
        return None  # frames simply start coming again
    else:
        return f"unknown message type {str(kind)[:40]!r}"
    if not hub.command(session, command):
        return "too many requests waiting; wait for the answers"
    return None


async def _send_loop(
    ws: WebSocket,
    hub: LiveHub,
    session: WebSession,
    wake: asyncio.Event,
    replies: asyncio.Queue[dict[str, Any]],
) -> None:
    """Everything the client gets goes through here, so a client that does not read blocks only
    this task; meanwhile newer results replace older ones in the session's slot."""
    while True:
        await wake.wait()
        wake.clear()
        while not replies.empty():
            await ws.send_text(json.dumps(replies.get_nowait()))
        out = session.outbox.take(0)
        if out is not None:
            faces = min(out.faces_swapped, 65535)
            header = FRAME_OUT.pack(out.t_client, faces, out.source_index, out.process_ms)
            await ws.send_bytes(header + out.jpeg)
            hub.sent(session)


def _json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
