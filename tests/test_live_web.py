"""The Live tab and its WebSocket (`/v1/live`), end to end against a real `facefuse serve`.

One keyed server serves every test here. The browser test gives headless Chromium a fake camera
that plays part of short_hamilton_clip.mp4 (a .y4m made here) and checks the swapped stream's
faces with dlib descriptors; the socket tests speak the protocol directly (websockets' client).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from cli_helpers import cli_env
from conftest import media
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from facefuse.service.launch import ServerProcess

CLIP = "video/short_hamilton_clip.mp4"
CLIP_FRAMES = range(95, 205)  # Lin-Manuel Miranda on stage, face to camera (no cut), ~3.7 s
SOURCE_A = "images/biden.jpg"
SOURCE_B = "images/rose_leslie1.jpg"
CHROMIUM = "/usr/bin/chromium"
FRAME_OUT = struct.Struct("<dHhf")
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    frames = []
    with av.open(str(media(CLIP))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in CLIP_FRAMES:
                frames.append(frame.to_ndarray(format="rgb24"))
            if i >= CLIP_FRAMES.stop:
                break
    assert frames and frames[0].shape == (360, 640, 3)
    return frames


@pytest.fixture(scope="module")
def clip_jpegs(clip_frames) -> list[bytes]:
    return [_jpeg(f) for f in clip_frames]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A server that wants API keys; yields (base URL, key)."""
    root = tmp_path_factory.mktemp("live-web")
    env = cli_env(root / "config")
    key = subprocess.run(
        [sys.executable, "-m", "facefuse", "serve", "--data-dir", str(root / "data"), "--create-key", "live"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    args = ("--require-keys", "--live-sessions-per-key", "2", "--rate-limit", "0")
    with ServerProcess(root / "data", *args, env=env) as srv:
        yield srv.url, key


def _jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _stats(base: str, key: str) -> dict:
    res = httpx.get(f"{base}/v1/live/stats", headers={"X-API-Key": key}, timeout=10)
    res.raise_for_status()
    return res.json()


def _wait_for(check, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def _open(base: str, key: str | None, **kwargs) -> Iterator[ClientConnection]:
    """A socket that has said hello with this key."""
    with connect(base.replace("http://", "ws://") + "/v1/live", open_timeout=10, **kwargs) as ws:
        ws.send(json.dumps({"type": "hello", "key": key}))
        yield ws


def _recv_json(ws: ClientConnection, kind: str, timeout: float = 30.0) -> dict:
    """The next JSON message of this type (frames before it are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(msg, str):
            data = json.loads(msg)
            if data["type"] in (kind, "error"):
                return data


def _add_source(ws: ClientConnection, name: str) -> dict:
    data = base64.b64encode(media(name).read_bytes()).decode()
    ws.send(json.dumps({"type": "add_source", "name": Path(name).name, "data": data}))
    return _recv_json(ws, "sources")


def _swap(ws: ClientConnection, jpeg: bytes, t: float) -> tuple[np.ndarray, int, int]:
    """One frame there and back (one in flight): the output, faces swapped, source index."""
    ws.send(struct.pack("<d", t) + jpeg)
    while True:
        msg = ws.recv(timeout=30)
        if isinstance(msg, bytes):
            t_back, faces, index, _ = FRAME_OUT.unpack_from(msg)
            assert t_back == t
            return _rgb(msg[FRAME_OUT.size :]), faces, index
        data = json.loads(msg)
        assert data["type"] != "error", data


def _descriptor(pipe, rgb: np.ndarray) -> np.ndarray | None:
    faces = pipe.analyser.analyse(rgb, descriptors=True, largest_only=True)
    return faces[0].descriptor if faces else None


def _distances(pipe, outputs: list[np.ndarray], *who: np.ndarray) -> np.ndarray:
    """Median descriptor distance of the outputs' largest faces to each person in `who`."""
    rows = []
    for rgb in outputs:
        d = _descriptor(pipe, rgb)
        if d is not None:
            rows.append([float(np.linalg.norm(d - w)) for w in who])
    assert len(rows) >= max(2, len(outputs) // 2), f"faces found in only {len(rows)} of {len(outputs)}"
    return np.median(np.array(rows), axis=0)


@pytest.fixture(scope="module")
def people(pipe) -> dict[str, np.ndarray]:
    return {
        name: pipe.source(media(path), descriptors=True).descriptor
        for name, path in (("a", SOURCE_A), ("b", SOURCE_B))
    }


def test_each_session_keeps_its_own_source(server, clip_jpegs, clip_frames, pipe, people):
    base, key = server
    with _open(base, key) as one, _open(base, key) as two:
        assert _recv_json(one, "ready")["type"] == "ready"
        assert _recv_json(two, "ready")["type"] == "ready"
        assert _add_source(one, SOURCE_A) == {"type": "sources", "names": ["biden.jpg"], "index": 0}
        assert _add_source(two, SOURCE_B) == {"type": "sources", "names": ["rose_leslie1.jpg"], "index": 0}
        assert _stats(base, key)["your_sessions"] == 2
        outs: dict[str, list[np.ndarray]] = {"one": [], "two": []}
        swapped = {"one": 0, "two": 0}
        # The same frames through both sessions, interleaved: only the session's state differs.
        for i, jpeg in enumerate(clip_jpegs[::3]):
            for name, ws in (("one", one), ("two", two)):
                out, faces, index = _swap(ws, jpeg, 100.0 * i)
                assert index == 0
                swapped[name] += faces
                if i % 4 == 3:
                    outs[name].append(out)
        assert swapped["one"] > 20 and swapped["two"] > 20, swapped
    original = _distances(pipe, clip_frames[::12], people["a"], people["b"])
    d_one = _distances(pipe, outs["one"], people["a"], people["b"])
    d_two = _distances(pipe, outs["two"], people["a"], people["b"])
    # Each session's faces moved toward its own source, and are nearer it than the other's are.
    assert d_one[0] < original[0] - 0.1 and d_two[1] < original[1] - 0.08, (original, d_one, d_two)
    assert d_one[0] < d_two[0] - 0.1 and d_two[1] < d_one[1] - 0.08, (d_one, d_two)


def test_a_client_that_leaves_leaves_nothing_behind(server, clip_jpegs):
    base, key = server
    stack = contextlib.ExitStack()
    polite = stack.enter_context(_open(base, key))
    rude = stack.enter_context(_open(base, key))
    for ws in (polite, rude):
        _recv_json(ws, "ready")
        _add_source(ws, SOURCE_A)
        for i, jpeg in enumerate(clip_jpegs[:5]):
            _swap(ws, jpeg, 40.0 * i)
        ws.send(struct.pack("<d", 500.0) + clip_jpegs[5])  # one frame still in flight
    stats = _stats(base, key)
    assert stats["sessions"] == 2 and stats["threads"] >= 1, stats
    polite.close()
    rude.socket.close()  # gone without a close handshake
    stack.close()
    _wait_for(lambda: _stats(base, key)["sessions"] == 0, "the sessions closed")
    _wait_for(lambda: _stats(base, key)["threads"] == 0, "the hub threads ended")
    assert _stats(base, key)["frames_held"] == 0


def test_a_client_that_does_not_read_loses_frames_not_memory(server, clip_jpegs):
    base, key = server
    sent = 0
    # max_queue=1: the client library stops reading the socket after one unread message, so the
    # server's sends back up as they would for a stalled browser.
    with _open(base, key, max_queue=1, compression=None) as ws:
        _recv_json(ws, "ready")
        _add_source(ws, SOURCE_A)
        start = _stats(base, key)
        rounds = []
        for _ in range(5):
            for jpeg in clip_jpegs:
                ws.send(struct.pack("<d", 10.0 * sent) + jpeg)
                sent += 1
                time.sleep(0.02)  # about a camera's pace, so the server has results to send
            stats = _stats(base, key)
            rounds.append(stats)
            assert stats["frames_held"] <= 2, stats  # one waiting, one unsent: never a queue
        _wait_for(lambda: _stats(base, key)["frames_in"] - start["frames_in"] == sent, "every frame arrived")
        out = [r["frames_out"] - start["frames_out"] for r in rounds]
        processed = [r["frames_processed"] - start["frames_processed"] for r in rounds]
        rss = [r["rss_mb"] for r in rounds]
        print(f"sent {sent}; per round: processed {processed}, out {out}, rss MB {rss}")
        # Once the socket buffers are full the server sends nothing more, yet keeps processing the
        # newest frames; each result replaces the one before it.
        assert out[-1] - out[-2] <= 2 and processed[-1] - processed[-2] >= 20, (out, processed)
        last = _stats(base, key)
        assert last["frames_dropped"] - start["frames_dropped"] >= sent - out[-1] - 2, last
        # Memory stays flat (the frames of the last two rounds, kept, would be ~150 MB decoded).
        assert rss[-1] - rss[-3] < 20, rss
    _wait_for(lambda: _stats(base, key)["sessions"] == 0, "the session closed")


def test_bad_clients_are_refused_and_bad_frames_answered(server, clip_jpegs):
    base, key = server
    for given, code in ((None, 4401), ("ffk_not-a-key", 4401)):
        with _open(base, given) as ws:
            assert _recv_json(ws, "ready")["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == code
    # A page on another site cannot use this server through a visitor's browser.
    with pytest.raises(InvalidStatus):
        connect(base.replace("http://", "ws://") + "/v1/live", origin="http://elsewhere.example")

    with _open(base, key) as first, _open(base, key) as second:
        _recv_json(first, "ready")
        _recv_json(second, "ready")
        with _open(base, key) as third:  # the key's limit is two sessions at once
            refused = _recv_json(third, "ready")
            assert refused["code"] == "too_many_sessions", refused
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=10)
            assert closed.value.rcvd.code == 4429

        first.send(struct.pack("<d", 1.0) + b"\xff\xd8\xff" + bytes(2 * 1024 * 1024))
        assert _recv_json(first, "error")["code"] == "too_large"
        first.send(struct.pack("<d", 2.0) + b"GIF89a" + bytes(100))
        assert _recv_json(first, "error")["code"] == "input_invalid"
        first.send(json.dumps({"type": "add_source", "name": "x.jpg", "data": "not base64!"}))
        assert _recv_json(first, "error")["code"] == "invalid_request"
        first.send(json.dumps({"type": "use_source", "index": 3}))
        assert "no source 3" in _recv_json(first, "error")["message"]
        # The session goes on: a good frame comes back (unchanged: no source yet).
        out, faces, index = _swap(first, clip_jpegs[0], 3.0)
        assert (faces, index) == (0, -1) and out.shape == (360, 640, 3)
    _wait_for(lambda: _stats(base, key)["sessions"] == 0, "the sessions closed")


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory, clip_frames) -> Path:
    """The clip's frames as a .y4m file, which Chromium plays (in a loop) as its fake camera."""
    path = tmp_path_factory.mktemp("camera") / "clip.y4m"
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for rgb in clip_frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def camera_browser(fake_camera):
    from playwright.sync_api import sync_playwright
    from test_web import CHROMIUM_ARGS

    args = [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={fake_camera}",
    ]
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def _canvas(page, selector: str) -> np.ndarray:
    url = page.eval_on_selector(selector, "el => el.toDataURL('image/png')")
    return _rgb(base64.b64decode(url.split(",", 1)[1]))


def _camera_frame(page) -> np.ndarray:
    url = page.eval_on_selector(
        "#live-video",
        """v => { const c = document.createElement('canvas');
                  c.width = v.videoWidth; c.height = v.videoHeight;
                  c.getContext('2d').drawImage(v, 0, 0); return c.toDataURL('image/png'); }""",
    )
    return _rgb(base64.b64decode(url.split(",", 1)[1]))


def _samples(page, n: int = 8, every_s: float = 0.4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    outputs, cameras = [], []
    for _ in range(n):
        time.sleep(every_s)
        outputs.append(_canvas(page, "#live-output"))
        cameras.append(_camera_frame(page))
    return outputs, cameras


def test_live_tab_swaps_the_camera_and_switches_source(camera_browser, server, pipe, people):
    from playwright.sync_api import expect

    base, key = server
    context = camera_browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["camera"], origin=base)
    # The key as the Swap tab would have kept it after asking once.
    context.add_init_script(f"sessionStorage.setItem('facefuse.apiKey', {json.dumps(key)})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base)
    page.click("#tab-live")
    expect(page.locator("#panel-live")).to_be_visible()
    expect(page.locator("#panel-swap")).to_be_hidden()
    expect(page.locator(".live-badge")).to_have_text("AI-generated")
    expect(page.locator(".live-badge")).to_be_visible()
    expect(page.locator(".privacy-live")).to_contain_text("never stored")

    page.set_input_files("#live-source-input", media(SOURCE_A))
    expect(page.locator("#live-sources .chip")).to_have_text(["biden.jpg"])
    page.click("#live-start")
    expect(page.locator("#live-status")).to_have_text("Live", timeout=WAIT_MS)
    expect(page.locator("#live-faces")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#live-fps")).to_have_text(re.compile(r"^[1-9]\d*\.\d$|^0\.[1-9]$"), timeout=WAIT_MS)
    expect(page.locator("#live-latency")).to_have_text(re.compile(r"^\d+ ms$"))
    fps = float(page.locator("#live-fps").inner_text())
    latency = int(page.locator("#live-latency").inner_text().split()[0])
    print(f"on the page: {fps} fps, {latency} ms round trip")
    assert 0 < latency < 5000

    outputs, cameras = _samples(page)
    original = _distances(pipe, cameras, people["a"], people["b"])
    first = _distances(pipe, outputs, people["a"], people["b"])
    assert outputs[-1].shape == (360, 640, 3)
    assert first[0] < original[0] - 0.1 and first[0] < first[1], (original, first)

    # A second photo: it becomes the face on screen.
    page.set_input_files("#live-source-input", media(SOURCE_B))
    chips = page.locator("#live-sources .chip")
    expect(chips).to_have_text(["biden.jpg", "rose_leslie1.jpg"], timeout=WAIT_MS)
    expect(chips.nth(1)).to_have_attribute("aria-checked", "true")
    time.sleep(1.0)
    outputs, _ = _samples(page)
    second = _distances(pipe, outputs, people["a"], people["b"])
    # The face on screen moved away from the first source and toward the second.
    assert second[1] < first[1] - 0.08 and second[0] > first[0] + 0.1, (first, second)

    # Back to the first one, picked from the list.
    chips.nth(0).click()
    expect(chips.nth(0)).to_have_attribute("aria-checked", "true")
    time.sleep(1.0)
    outputs, _ = _samples(page, n=5)
    third = _distances(pipe, outputs, people["a"], people["b"])
    assert third[0] < second[0] - 0.1, (second, third)

    # Stop: the camera goes off and frames stop; the session stays for Resume.
    page.click("#live-stop")
    expect(page.locator("#live-start")).to_have_text("Resume")
    expect(page.locator("#live-fps")).to_have_text("–")
    before = _stats(base, key)
    time.sleep(1.0)
    after = _stats(base, key)
    assert after["your_sessions"] == 1 and after["frames_in"] - before["frames_in"] <= 2, (before, after)
    page.click("#live-start")
    expect(page.locator("#live-faces")).to_have_text("1", timeout=WAIT_MS)
    assert _stats(base, key)["frames_in"] > after["frames_in"]

    context.close()
    _wait_for(lambda: _stats(base, key)["sessions"] == 0, "the page's session closed")
    _wait_for(lambda: _stats(base, key)["threads"] == 0, "the hub threads ended")
    assert errors == [], f"uncaught errors in the page: {errors}"
