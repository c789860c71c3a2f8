"""Live mode: bounded latency by dropping, clean ends, source changes, the control socket, the CLI."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import socket
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli
from conftest import media

from facefuse.analysis.select import Mode, Selection
from facefuse.analysis.track import FaceTracker
from facefuse.cli_live import _output_loop
from facefuse.errors import CameraLost, ExitCode
from facefuse.live import LatencyHistogram, LatestSlot, LiveSession, LiveSettings
from facefuse.live_io import CameraInput, ControlServer, FileInput, FileOutput
from facefuse.media import inspect_file
from facefuse.stream import FrameSwapper

FPS = 30


def _pan_frames(still: np.ndarray, n: int, width: int = 640) -> list[np.ndarray]:
    """A photo as a slow pan, `width` wide (faces of two_people.jpg are ~90 px at 640)."""
    h, w = still.shape[:2]
    s = width / w
    height = int(h * s) // 2 * 2
    out = []
    for i in range(n):
        m = np.float32([[s, 0, 0.5 * i], [0, s, 0]])
        out.append(cv2.warpAffine(still, m, (width, height), borderMode=cv2.BORDER_REFLECT))
    return out


@pytest.fixture(scope="module")
def frames(images) -> list[np.ndarray]:
    return _pan_frames(images("images/two_people.jpg"), 90)


@pytest.fixture(scope="module")
def clip(frames, tmp_path_factory) -> Path:
    """Two seconds of the pan as an H.264 file at 30 fps."""
    path = tmp_path_factory.mktemp("live") / "pan.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for frame in frames[:60]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def sources(pipe):
    return [
        ("kit", pipe.source(media("images/kit_harington1.jpg"))),
        ("rose", pipe.source(media("images/rose_leslie1.jpg"))),
    ]


def _feed(session: LiveSession, frames: list[np.ndarray], fps: float = FPS) -> threading.Thread:
    """A camera: frames pushed at `fps` on their own thread, then the end of input."""

    def run() -> None:
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            due = t0 + i / fps
            time.sleep(max(0.0, due - time.perf_counter()))
            session.push(frame, due, i / fps)
        session.end_input()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _drain(session: LiveSession) -> list[tuple[float, object]]:
    """Take every result as it comes; (latency s, result) per frame delivered."""
    out = []
    while not session.finished:
        result = session.latest(timeout=0.05)
        if result is not None:
            now = time.perf_counter()
            session.delivered(result, now)
            out.append((now - result.t_capture, result))
    return out


class SlowSwapper(FrameSwapper):
    """The real swapper, made artificially slow: 100 ms a frame, three times the frame interval."""

    def process(self, frame, t, timings=None, *, detections=None):
        time.sleep(0.1)
        return super().process(frame, t, timings, detections=detections)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def test_latest_slot_keeps_only_the_newest_and_hands_back_what_it_replaced():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1  # 1 was never taken: the caller counts it dropped
    assert slot.take(0) == 2
    assert slot.take(0.01) is None
    slot.close()
    assert slot.put(3) == 3  # refused once closed
    assert slot.closed and slot.take(1.0) is None


def test_latency_histogram_percentiles_match_numpy_to_a_millisecond():
    rng = np.random.default_rng(0)
    values = rng.gamma(4.0, 12.0, 5000)
    hist = LatencyHistogram()
    for v in values:
        hist.add(float(v))
    for q in (50, 95):
        assert abs(hist.percentile(q) - np.percentile(values, q)) <= 1.0
    assert hist.max_ms == pytest.approx(values.max())


def test_tracker_given_detections_never_runs_its_own_detector(pipe, frames, monkeypatch):
    tracker = FaceTracker(pipe.analyser)
    found = pipe.analyser.detector.run(frames[0], 1.0)
    assert len(found) == 2

    run = pipe.analyser.detector.run

    def crops_only(image, *args, **kwargs):
        # The per-track check runs the detector on a small crop; a full-frame pass is what must not run.
        assert image.shape != frames[0].shape, "the tracker ran a full-frame detection"
        return run(image, *args, **kwargs)

    monkeypatch.setattr(pipe.analyser.detector, "run", crops_only)
    assert tracker.update(frames[0], 0.0, detections=[]) == []  # no news, no tracks yet
    tracks = tracker.update(frames[1], 1 / FPS, detections=found)  # boxes from an older frame
    assert len(tracks) == 2
    for i in range(2, 30):
        tracks = tracker.update(frames[i], i / FPS, detections=[])
    assert sorted(tr.id for tr in tracks) == [0, 1]  # followed without detecting again


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


def test_a_slow_swap_drops_frames_and_latency_stays_bounded(pipe, sources, frames):
    session = LiveSession(
        pipe,
        sources,
        Selection(mode=Mode.MANY),
        swapper_factory=lambda p, s, sel: SlowSwapper(p, s, sel),
    )
    feeder = _feed(session, frames + frames[::-1] + frames)  # 9 s of input at 30 fps
    delivered = _drain(session)
    feeder.join()
    summary = session.close()
    assert mp.active_children() == []  # the detector process is gone
    lat = np.array([d for d, _ in delivered])
    assert summary.frames_in == 270
    assert summary.frames_in == summary.frames_out + summary.frames_dropped
    assert summary.frames_dropped > 150  # ~10 fps out of 30 in: most frames must be dropped ...
    assert summary.frames_out == len(delivered) > 20
    # ... so that none waits: the age on screen is about one frame interval + one (slow) processing.
    # Queued instead of dropped, frames would age ~0.2 s more with every 0.1 s of input: the last
    # one would be ~20 s old. The slack covers a machine shared with other work.
    assert np.median(lat) < 0.1 + 1 / FPS + 0.1, np.median(lat)
    assert lat.max() < 1.0, lat.max()
    third = len(lat) // 3
    assert np.median(lat[-third:]) <= np.median(lat[:third]) + 0.05  # no drift
    assert summary.latency_ms_max == pytest.approx(1000 * lat.max(), abs=1)
    assert summary.faces_swapped > 0 and summary.ended == "end of input"


def test_source_changes_apply_from_the_next_frame_without_loading_models(pipe, sources, frames, monkeypatch):
    session = LiveSession(pipe, sources, Selection(mode=Mode.MANY), LiveSettings(detector_process=False))

    def no_reload(*args, **kwargs):
        raise AssertionError("models loaded again")

    monkeypatch.setattr("facefuse.analysis.analyser.FaceAnalyser.__init__", no_reload)
    monkeypatch.setattr("facefuse.pipeline.Pipeline.__init__", no_reload)
    try:
        outputs = {}
        plan = [("kit", {}), ("rose", {"index": 1}), ("obama", {"path": str(media("images/obama.jpg"))})]
        for i, (name, change) in enumerate(plan):
            if change:
                assert session.change_source(**change).result(timeout=30) == i
            for k in range(3):
                session.push(frames[10 * i + k])
                result = None
                while result is None:
                    result = session.latest(timeout=1.0)
                session.delivered(result)
            assert result.source_index == i and result.faces_swapped == 2
            outputs[name] = result.image
        bad = session.change_source(path=str(media("groups/dogs_no_faces.jpg")))
        with pytest.raises(Exception, match="no face"):
            bad.result(timeout=30)
        with pytest.raises(Exception, match="no source 7"):
            session.change_source(index=7).result(timeout=5)
        assert session.change_source(step=1).result(timeout=5) == 0  # wraps around
    finally:
        summary = session.close()
    assert summary.source_changes == 3 and summary.sources[2].endswith("obama.jpg")
    # Each identity gives a different picture of the same faces.
    diff = [
        float(np.abs(outputs[a].astype(int) - outputs[b]).mean())
        for a, b in (("kit", "rose"), ("rose", "obama"))
    ]
    assert min(diff) > 0.5


def test_control_socket_changes_the_source_and_answers_bad_requests(pipe, sources, tmp_path):
    session = LiveSession(pipe, sources, settings=LiveSettings(detector_process=False))
    quit_called = threading.Event()
    address = str(tmp_path / "ctl.sock")
    server = ControlServer(address, session, quit_called.set)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(address)
            stream = sock.makefile("rwb")

            def ask(line: bytes) -> dict:
                stream.write(line + b"\n")
                stream.flush()
                return json.loads(stream.readline())

            assert ask(b'{"source_index": 1}') == {"ok": True, "source_index": 1}
            assert ask(json.dumps({"source": str(media("images/biden.jpg"))}).encode()) == {
                "ok": True,
                "source_index": 2,
            }
            assert ask(b'{"step": -1}') == {"ok": True, "source_index": 1}
            missing = ask(b'{"source": "/nonexistent/x.jpg"}')
            assert missing["ok"] is False and "/nonexistent/x.jpg" in missing["error"]
            assert ask(b'{"what": 1}')["ok"] is False
            assert ask(b'{"quit": true}') == {"ok": True, "quit": True}
        assert quit_called.is_set()
        assert session.index == 1
    finally:
        server.close()
        session.close()
    assert not os.path.exists(address)


class _RecordingSession:
    """Stands in for a LiveSession: records each change asked for."""

    def __init__(self) -> None:
        self.asked: list[dict] = []

    def change_source(self, *, index=None, step=0, path=None):
        from concurrent.futures import Future

        self.asked.append({"index": index, "step": step, "path": path})
        done: Future[int] = Future()
        done.set_result(0)
        return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_control_socket_refuses_a_web_page_post_and_never_runs_its_body():
    session, quit_called = _RecordingSession(), threading.Event()
    server = ControlServer(str(_free_port()), session, quit_called.set)
    try:
        # What fetch(url, {method: "POST", mode: "no-cors", body}) sends: the body is a valid command.
        body = b'{"quit": true}\n{"source": "/etc/passwd"}\n'
        request = (
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            b"Content-Length: %d\r\nOrigin: http://evil.example\r\n\r\n" % len(body)
        ) + body
        with socket.create_connection(("127.0.0.1", int(server.address))) as sock:
            sock.sendall(request)
            lines = _read_all(sock).splitlines()  # the server closes the connection
        assert len(lines) == 1
        reply = json.loads(lines[0])
        assert reply["ok"] is False and "not JSON" in reply["error"]
        assert not quit_called.is_set() and session.asked == []
        # A client speaking the protocol is still served on a new connection.
        with socket.create_connection(("127.0.0.1", int(server.address))) as sock:
            sock.sendall(b'{"step": 1}\n')
            sock.shutdown(socket.SHUT_WR)
            assert json.loads(_read_all(sock)) == {"ok": True, "source_index": 0}
        assert session.asked == [{"index": None, "step": 1, "path": None}]
    finally:
        server.close()


def test_control_socket_closes_on_an_over_long_line_and_runs_nothing_after_it(tmp_path):
    from facefuse.live_io import MAX_CONTROL_LINE

    session, quit_called = _RecordingSession(), threading.Event()
    address = str(tmp_path / "ctl.sock")
    server = ControlServer(address, session, quit_called.set)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(address)
            long_line = b'{"source": "' + b"a" * (MAX_CONTROL_LINE + 10) + b'"}\n'
            # Sent from a thread: the server stops reading part-way, so a blocking send could stall.
            sender = threading.Thread(target=_send_quietly, args=(sock, long_line + b'{"quit": true}\n'))
            sender.start()
            lines = _read_all(sock).splitlines()
            sender.join(10)
        assert len(lines) == 1 and "longer than" in json.loads(lines[0])["error"]
        assert session.asked == [] and not quit_called.is_set()
    finally:
        server.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closes the connection part-way
        sock.sendall(data)


def test_control_unix_socket_is_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        address = tmp_path / "ctl.sock"
        server = ControlServer(str(address), _RecordingSession(), lambda: None)
    finally:
        os.umask(old)
    try:
        assert address.stat().st_mode & 0o777 == 0o600
    finally:
        server.close()


class _Camera:
    """A capture device that delivers `n` frames, then fails like an unplugged camera."""

    def __init__(self, frames: list[np.ndarray], n: int, how: str) -> None:
        self.frames, self.n, self.how, self.i = frames, n, how, 0

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 374, cv2.CAP_PROP_FPS: 30}.get(
            prop, 0
        )

    def read(self):
        time.sleep(1 / FPS)
        if self.i >= self.n:
            if self.how == "error":
                raise cv2.error("device disconnected")
            return False, None
        self.i += 1
        return True, cv2.cvtColor(self.frames[self.i % len(self.frames)], cv2.COLOR_RGB2BGR)

    def release(self) -> None:
        pass


@pytest.mark.parametrize("how", ["end", "error"])
def test_a_camera_that_goes_away_ends_the_session_with_its_summary_and_a_good_file(
    pipe, sources, frames, tmp_path, how
):
    camera = CameraInput(0, capture=_Camera(frames, 45, how))
    session = LiveSession(pipe, sources)
    out = tmp_path / "cam.mp4"
    output = FileOutput(out, camera.width, camera.height, camera.fps, pipe.swapper.digital_source_type)
    stop = threading.Event()
    capture = threading.Thread(target=camera.run, args=(session, stop, session.stats.stage))
    capture.start()
    _output_loop(session, output, "encode", stop)
    capture.join()
    summary = session.close()
    output.close(True)
    assert summary.ended == "camera lost"
    assert summary.frames_in == 45 == summary.frames_out + summary.frames_dropped
    assert summary.frames_out > 20 and summary.faces_swapped > 0
    with pytest.raises(CameraLost) as err:
        camera.check()
    assert err.value.exit_code == ExitCode.CAMERA_LOST == 44
    report = inspect_file(out)
    assert report.label and report.manifest_valid
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == summary.frames_out
    assert [p.name for p in tmp_path.iterdir()] == ["cam.mp4"]  # no temp files left


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_replays_a_file_in_real_time_and_prints_the_summary(clip, tmp_path):
    out = tmp_path / "out.mp4"
    proc = run_cli(
        tmp_path / "cfg",
        "live",
        "--source",
        media("images/kit_harington1.jpg"),
        "--input",
        clip,
        "--output",
        out,
        "--json",
        "--mode",
        "many",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in ("fps", "frames_in", "frames_out", "frames_dropped", "latency_ms_p50", "latency_ms_p95"):
        assert key in summary
    assert summary["frames_in"] == 60 == summary["frames_out"] + summary["frames_dropped"]
    assert summary["ended"] == "end of input" and summary["faces_swapped"] > 0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p95"] <= summary["latency_ms_max"]
    assert set(summary["stages_ms"]) >= {"capture", "analyse", "swap", "encode"}
    # Paced like a camera: two seconds of input take about two seconds.
    assert 1.7 < summary["duration_s"] < 3.0
    report = inspect_file(out)
    assert report.label and report.manifest_valid
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cfg") == ["out.mp4"]


def test_cli_without_a_camera_says_so_in_one_line(tmp_path):
    proc = run_cli(
        tmp_path, "live", "-s", media("images/biden.jpg"), "--camera", "57", "-o", tmp_path / "o.mp4"
    )
    assert_one_line_error(proc, ExitCode.NO_CAMERA, "camera 57")


def test_cli_virtual_camera_missing_is_a_clear_error(clip, tmp_path):
    # CI has neither pyvirtualcam's backends (v4l2loopback, OBS) nor, usually, pyvirtualcam itself.
    proc = run_cli(tmp_path, "live", "-s", media("images/biden.jpg"), "--input", clip, "--output", "virtual")
    assert_one_line_error(proc, ExitCode.VIRTUAL_CAMERA_UNAVAILABLE, "--output virtual")


def test_cli_window_without_a_display_is_a_clear_error(clip, tmp_path, monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(var, raising=False)
    proc = run_cli(tmp_path, "live", "-s", media("images/biden.jpg"), "--input", clip)
    assert_one_line_error(proc, ExitCode.WINDOW_UNAVAILABLE, "--output window")


def test_cli_bad_input_and_output_are_one_line_errors(clip, tmp_path):
    src = media("images/biden.jpg")
    proc = run_cli(tmp_path, "live", "-s", src, "--input", tmp_path / "none.mp4", "-o", tmp_path / "o.mp4")
    assert_one_line_error(proc, ExitCode.INPUT_MISSING, "none.mp4")
    proc = run_cli(tmp_path, "live", "-s", src, "--input", clip, "-o", tmp_path / "o.mkv")
    assert_one_line_error(proc, ExitCode.USAGE, "o.mkv")
    proc = run_cli(tmp_path, "live", "-s", tmp_path / "nobody.jpg", "--input", clip, "-o", tmp_path / "o.mp4")
    assert_one_line_error(proc, ExitCode.INPUT_MISSING, "nobody.jpg")
    assert not (tmp_path / "o.mp4").exists()


def test_file_input_reports_its_geometry(clip):
    src = FileInput(clip)
    assert (src.width, src.height) == (640, 374) and src.fps == pytest.approx(30)


def test_window_shows_frames_and_turns_keys_into_commands(monkeypatch, frames):
    pygame = pytest.importorskip("pygame")  # the `live` extra; installed with `dev`
    from facefuse.live_io import WindowOutput

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a window with no screen behind it
    window = WindowOutput(320, 188)
    try:
        assert window.show(frames[0], 0.0) == []
        for char in ("n", "x", "p", "q"):
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, unicode=char, key=ord(char)))
        assert window.show(frames[1], 0.03) == ["n", "p", "q"]
        shown = pygame.surfarray.array3d(window.screen).swapaxes(0, 1)
        expected = cv2.resize(frames[1], (320, 188), interpolation=cv2.INTER_AREA)
        assert float(np.abs(shown.astype(int) - expected).mean()) < 6
        pygame.event.post(pygame.event.Event(pygame.QUIT))
        assert window.poll() == ["q"]
    finally:
        window.close(True)


def test_learned_models_run_in_this_process_never_forked(pipe, images, tmp_path):
    import zoo_onnx as z

    from facefuse.models import ModelStore, SessionPool, default_registry
    from facefuse.pipeline import Pipeline
    from facefuse.zoo import ModelChoice

    img = images("images/kit_harington1.jpg")
    face = pipe.analyser.analyse(img, largest_only=True)[0]
    h, w = img.shape[:2]
    scale = int(640 * h / w) / h
    box, kps = face.box * scale, face.landmarks_5 * scale
    cx, cy = (box[:2] + box[2:]) / 2
    planted = [dict(stride=16, row=int(cy // 16), col=int(cx // 16), score=0.9, box=tuple(box), kps=kps)]
    rng = np.random.default_rng(3)
    paths = {
        "scrfd_10g": z.save(z.scrfd(planted), tmp_path / "scrfd_10g.onnx"),
        "arcface_w600k_r50": z.save(z.arcface(rng.normal(size=(3, 512))), tmp_path / "arcface.onnx"),
        "inswapper_128": z.save(
            z.inswapper(rng.normal(size=(512, 512)).astype(np.float32)), tmp_path / "inswapper.onnx"
        ),
    }
    pool = SessionPool(ModelStore(default_registry(), tmp_path, overrides=paths, verify=False))
    choice = ModelChoice(detector="scrfd_10g", recogniser="arcface_w600k_r50", swapper="inswapper_128")
    learned = Pipeline(models=choice, pool=pool)
    session = LiveSession(learned, [("kit", learned.source(img))])  # default settings: would fork
    try:
        assert session.pids == [os.getpid()]
        assert type(session._detector).__name__ == "DetectorThread"
        feeder = _feed(session, [img] * 20, fps=15)
        # A new source photo goes through the detector while its thread may be running it.
        changed = session.change_source(path=str(media("images/kit_harington1.jpg")))
        delivered = _drain(session)
        feeder.join()
        assert changed.result(30) == 1
    finally:
        summary = session.close()
    assert summary.ended == "end of input" and delivered
    assert summary.frames_with_faces > 0 and summary.faces_swapped > 0
