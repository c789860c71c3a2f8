"""Where live frames come from (a camera, or a video file paced as a camera) and where they go (a
file, a preview window, a virtual camera)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import av.error
import cv2
import numpy as np

from facefuse.errors import (
    CameraLost,
    NoCamera,
    OutputWriteFailed,
    VirtualCameraUnavailable,
    WindowUnavailable,
)
from facefuse.media import video as media
from facefuse.media.image import _current_umask

# ---------------------------------------------------------------------------------------------
# Inputs: each runs on the capture thread and pushes frames into a LiveSession
# ---------------------------------------------------------------------------------------------


class FrameTarget(Protocol):
    """What an input feeds (facefuse.live.LiveSession)."""

    def push(
        self, image: np.ndarray, t_capture: float | None = None, t_media: float | None = None
    ) -> None: ...

    def end_input(self, reason: str = "end of input") -> None: ...


class Input(Protocol):
    width: int
    height: int
    fps: float
    name: str

    def run(self, target: FrameTarget, stop: threading.Event, stage: Any) -> None: ...

    def close(self) -> None: ...


class FileInput:
    """A video file or stream replayed in real time: frame i is handed over at its own timestamp
    after the start (wall clock), as a camera would deliver it. A frame still waiting when the next
    one is due is the session's to drop."""

    def __init__(self, path: str | Path) -> None:
        self.info = media.probe(path)
        self.name = str(path)
        turned = self.info.rotation in (90, 270)
        self.width, self.height = (
            (self.info.height, self.info.width) if turned else (self.info.width, self.info.height)
        )
        self.fps = float(self.info.rate)

    def run(self, target: FrameTarget, stop: threading.Event, stage: Any) -> None:
        info = self.info
        reason = "end of input"
        with media.FrameReader(info) as reader:
            t0: float | None = None
            pts0 = info.pts[0]
            for frame in reader.frames(0, info.frame_count):
                media_t = float((frame.pts - pts0) * info.time_base)
                if t0 is None:
                    t0 = time.perf_counter()
                due = t0 + media_t
                wait = due - time.perf_counter()
                if wait > 0 and stop.wait(wait):
                    reason = "quit"
                    break
                if stop.is_set():
                    reason = "quit"
                    break
                tc = time.perf_counter()
                rgb = media.upright(media.frame_to_rgb(frame), info.rotation)
                stage("capture", 1000 * (time.perf_counter() - tc))
                # Captured when it was due: time spent converting it counts toward its latency.
                target.push(rgb, due, media_t)
        target.end_input(reason)

    def close(self) -> None:
        pass


class CameraInput:
    """A camera through OpenCV. A camera that stops delivering ends the session (the summary is
    still given, exit code CAMERA_LOST)."""

    def __init__(self, index: int, capture: Any | None = None) -> None:
        self.name = f"camera {index}"
        self.lost = False
        if capture is None:
            # OpenCV logs a warning per backend it tries; the one-line error below says it all.
            previous = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            try:
                capture = cv2.VideoCapture(index)
            finally:
                cv2.utils.logging.setLogLevel(previous)
        if not capture.isOpened():
            capture.release()
            raise NoCamera(
                f"camera {index}: no such camera, or it cannot be opened (is another program using it?)"
            )
        self.capture = capture
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) or 640
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) or 480
        self.fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0

    def run(self, target: FrameTarget, stop: threading.Event, stage: Any) -> None:
        reason = "quit"
        while not stop.is_set():
            try:
                ok, bgr = self.capture.read()
            except cv2.error:
                ok, bgr = False, None
            t = time.perf_counter()
            if not ok or bgr is None:
                self.lost = True
                reason = "camera lost"
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            stage("capture", 1000 * (time.perf_counter() - t))
            target.push(rgb, t)
        target.end_input(reason)

    def close(self) -> None:
        self.capture.release()

    def check(self) -> None:
        if self.lost:
            raise CameraLost(f"{self.name}: stopped delivering frames; the session ended")


# ---------------------------------------------------------------------------------------------
# Outputs: run on the main thread
# ---------------------------------------------------------------------------------------------


class Output(Protocol):
    def show(self, image: np.ndarray, t: float) -> list[str]:
        """Show or write one frame; returns the keys pressed meanwhile ("n", "p", "q")."""
        ...

    def poll(self) -> list[str]: ...

    def close(self, ok: bool) -> None: ...


class FileOutput:
    """An mp4 written as frames come (H.264, zero-latency tuning: one packet per frame, so timing a
    frame's encode times its real cost), timestamped by capture time (frames dropped leave gaps, the
    timing stays true). On close it is labelled, signed and renamed onto the path in one step."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        source_type: str = "compositeWithTrainedAlgorithmicMedia",
    ) -> None:
        self.path = path
        self.source_type = source_type
        self.container_kind = media.video_container(path)
        stem = f".{path.name}.{os.getpid()}"
        self._raw = path.with_name(f"{stem}.raw.mp4")
        self._unsigned = path.with_name(f"{stem}.unsigned.mp4")
        self._signed = path.with_name(f"{stem}.signed.mp4")
        self.time_base = Fraction(1, 1000)
        try:
            self.container = av.open(str(self._raw), "w", format="mp4")
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputWriteFailed(f"{path}: cannot create ({exc})") from exc
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        ctx = self.stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        ctx.time_base = self.time_base
        self.stream.time_base = self.time_base
        ctx.color_range = 1
        # superfast: ~10 ms a 720p frame (veryfast ~15, ultrafast ~7 at twice the size).
        ctx.options = {"crf": "23", "preset": "superfast", "tune": "zerolatency"}
        self.size = (ctx.width, ctx.height)
        self.first_pts: int | None = None
        self._last_pts = -1
        self._t0: float | None = None

    def show(self, image: np.ndarray, t: float) -> list[str]:
        self._t0 = t if self._t0 is None else self._t0
        pts = max(self._last_pts + 1, round((t - self._t0) / self.time_base))
        self._last_pts = pts
        self.first_pts = pts if self.first_pts is None else self.first_pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(width=self.size[0], height=self.size[1], format="yuv420p", dst_color_range=1)
        frame.pts = pts
        frame.time_base = self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        return []

    def poll(self) -> list[str]:
        return []

    def close(self, ok: bool) -> None:
        try:
            if ok and self.first_pts is not None:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
            self.container.close()
            if not ok or self.first_pts is None:
                return
            media.mux_output(
                [(self._raw, self.first_pts)], None, self._raw, self._unsigned, self.container_kind
            )
            media.sign_video(
                self._unsigned,
                self._signed,
                container=self.container_kind,
                title=self.path.name,
                source_type=self.source_type,
            )
            try:
                os.chmod(self._signed, 0o666 & ~_current_umask())
                os.replace(self._signed, self.path)
            except OSError as exc:
                raise OutputWriteFailed(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        finally:
            for tmp in (self._raw, self._unsigned, self._signed):
                with contextlib.suppress(OSError):
                    tmp.unlink()


class WindowOutput:
    """A preview window (pygame/SDL, the optional `live` extra). Keys: n / p next / previous source,
    q or closing the window quits."""

    def __init__(self, width: int, height: int, title: str = "facefuse live (AI-generated)") -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        chosen = os.environ.get("SDL_VIDEODRIVER")  # set by hand (e.g. dummy for tests): trusted
        if sys.platform.startswith("linux") and not (
            chosen or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise WindowUnavailable(
                "--output window: no display here (DISPLAY is not set); write a file with --output out.mp4"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pygame imports the deprecated pkg_resources
                import pygame
        except ImportError:
            raise WindowUnavailable(
                "--output window needs pygame: pip install 'facefuse[live]' "
                "(or write a file: --output out.mp4)"
            ) from None
        self.pg = pygame
        try:
            pygame.display.init()
            self.screen = pygame.display.set_mode((width, height))
        except pygame.error as exc:
            raise WindowUnavailable(
                f"--output window: cannot open a window ({exc}); is there a display?"
            ) from None
        if not chosen and pygame.display.get_driver() in ("offscreen", "dummy"):
            pygame.display.quit()
            raise WindowUnavailable("--output window: no display here; write a file with --output out.mp4")
        pygame.display.set_caption(title)
        self.size = (width, height)

    def show(self, image: np.ndarray, t: float) -> list[str]:
        pg = self.pg
        surface = pg.image.frombuffer(np.ascontiguousarray(image).tobytes(), image.shape[1::-1], "RGB")
        if surface.get_size() != self.size:
            surface = pg.transform.smoothscale(surface, self.size)
        self.screen.blit(surface, (0, 0))
        pg.display.flip()
        return self.poll()

    def poll(self) -> list[str]:
        pg = self.pg
        keys = []
        for event in pg.event.get():
            if event.type == pg.QUIT:
                keys.append("q")
            elif event.type == pg.KEYDOWN and event.unicode in ("n", "p", "q"):
                keys.append(event.unicode)
        return keys

    def close(self, ok: bool) -> None:
        self.pg.display.quit()


class VirtualCameraOutput:
    """A virtual camera other programs can open (pyvirtualcam: v4l2loopback on Linux, OBS on
    Windows and macOS), so the swapped stream can be used in a video call."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise VirtualCameraUnavailable(
                "--output virtual needs pyvirtualcam: pip install 'facefuse[live]' and a virtual camera "
                "(Linux: the v4l2loopback module; Windows/macOS: OBS)"
            ) from None
        try:
            self.camera = pyvirtualcam.Camera(width=width, height=height, fps=fps)
        except Exception as exc:  # pyvirtualcam raises RuntimeError for a missing backend
            raise VirtualCameraUnavailable(
                f"--output virtual: no virtual camera on this system ({exc}); on Linux load "
                "v4l2loopback (modprobe v4l2loopback), on Windows/macOS install OBS"
            ) from None
        self.size = (width, height)

    def show(self, image: np.ndarray, t: float) -> list[str]:
        if image.shape[1::-1] != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.camera.send(np.ascontiguousarray(image))
        return []

    def poll(self) -> list[str]:
        return []

    def close(self, ok: bool) -> None:
        self.camera.close()


# ---------------------------------------------------------------------------------------------
# The control socket
# ---------------------------------------------------------------------------------------------


MAX_CONTROL_LINE = 65536  # bytes in one request line; a longer one closes the connection


def _parse_request(raw: bytes) -> dict[str, Any] | str:
    """One request line as a JSON object, or the reason it is not one."""
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return f"not JSON ({exc}); closing the connection"
    if not isinstance(request, dict):
        return "expected a JSON object; closing the connection"
    return request


class Controllable(Protocol):
    def change_source(self, *, index: int | None = None, step: int = 0, path: str | None = None) -> Any: ...


class ControlServer:
    """JSON lines on a localhost TCP port (`--control 7000`) or a Unix socket (`--control /tmp/ff.sock`).

    Requests, one per line: {"source": "photo.jpg"} (loaded once, then kept), {"source_index": 1},
    {"step": 1} (next; -1 previous), {"quit": true}. Each gets one line back: {"ok": true,
    "source_index": 1} or {"ok": false, "error": "..."}. A line that is not JSON, or is longer than
    MAX_CONTROL_LINE bytes, gets its error and closes the connection, so the body of an HTTP request
    (which a web page can send to any localhost port) is never run. A Unix socket is mode 0600.
    """

    def __init__(self, address: str, session: Controllable, on_quit: Any) -> None:
        import socketserver

        from facefuse.errors import ControlUnavailable

        self.session = session
        self.on_quit = on_quit
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while raw := self.rfile.readline(MAX_CONTROL_LINE + 1):
                    if len(raw) > MAX_CONTROL_LINE and not raw.endswith(b"\n"):
                        self.reply({"ok": False, "error": f"request longer than {MAX_CONTROL_LINE} bytes"})
                        return
                    request = _parse_request(raw)
                    if isinstance(request, str):
                        # Anything that is not JSON ends the connection: a web page can POST to a
                        # localhost port (no-cors), and its body line must never be read as a command.
                        self.reply({"ok": False, "error": request})
                        return
                    if not self.reply(server.answer(request)):
                        return

            def reply(self, reply: dict[str, Any]) -> bool:
                try:
                    self.wfile.write((json.dumps(reply) + "\n").encode())
                    self.wfile.flush()
                except OSError:
                    return False
                return True

        self.unix = not address.isdigit()
        try:
            if self.unix:
                if Path(address).exists():
                    raise ControlUnavailable(f"--control {address}: a file is already there")
                self.server: socketserver.BaseServer = socketserver.ThreadingUnixStreamServer(
                    address, Handler, bind_and_activate=False
                )
                try:
                    self.server.server_bind()
                except BaseException:
                    self.server.server_close()
                    raise
                try:
                    # Owner-only before it listens: nobody else on the machine may drive the session,
                    # and no connection can be queued while the umask's mode is still on it.
                    os.chmod(address, 0o600)
                    self.server.server_activate()
                except BaseException:
                    self.server.server_close()
                    with contextlib.suppress(OSError):
                        Path(address).unlink()
                    raise
            else:
                port = int(address)
                if not 0 < port < 65536:
                    raise ControlUnavailable(
                        f"--control {address}: not a TCP port (1..65535) or a socket path"
                    )
                self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise ControlUnavailable(f"--control {address}: cannot listen ({exc.strerror or exc})") from None
        self.server.daemon_threads = True
        self.address = address
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        from facefuse.errors import FacefuseError

        if request.get("quit"):
            self.on_quit()
            return {"ok": True, "quit": True}
        try:
            if "source" in request:
                done = self.session.change_source(path=str(request["source"]))
            elif "source_index" in request:
                done = self.session.change_source(index=int(request["source_index"]))
            elif "step" in request:
                done = self.session.change_source(step=int(request["step"]))
            else:
                return {"ok": False, "error": "expected one of: source, source_index, step, quit"}
            return {"ok": True, "source_index": done.result(timeout=60)}
        except (FacefuseError, ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": "timed out waiting for the session"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
        if self.unix:
            with contextlib.suppress(OSError):
                Path(self.address).unlink()
