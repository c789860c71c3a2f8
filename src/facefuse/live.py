"""Live swapping: frames in as a camera delivers them, swapped frames out with bounded latency.

    capture thread --> [latest-frame slot] --> session thread --> [latest-result slot] --> output
                                                |   ^       |   ^
                                   (every ~1 s) frame boxes frame result
                                                v   |       v   |
                                          detector process  swap process (track + swap)

Every slot holds one item: a newer frame replaces one that was never picked up, and that frame is
counted as dropped. Nothing queues without bound, so the age of the frame on screen stays within
about one frame interval plus the processing and output time, however long the session runs.

The swap process follows faces with the video tracker (shape predictor + crop check + One Euro
smoothing, a few ms a face) and swaps them, one frame at a time, for the session thread. The
full-frame detector, which costs 20-300 ms, runs in a forked process beside it on the latest frame
about once a second (continuously while no face is tracked), and its boxes are merged into the
tracker when they arrive: new faces are picked up without ever stalling the stream. Both processes
are forked once, after the models loaded. With learned (ONNX) models nothing is forked, since
onnxruntime sessions do not survive a fork: the swap work runs on the session thread and the
detector on a thread of its own (onnxruntime lets go of the GIL while it runs). dlib's models are
not thread-safe, so everything that touches them (tracking, swapping, loading a new source photo)
goes through the session thread, between frames; other threads hand it commands.

`LiveSession` is the core that the CLI (`facefuse live`) drives and a web client can drive the same
way: push frames with their capture time, take the latest swapped frame, report it delivered, change
the source, close for the summary.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from facefuse.analysis.detect import Detection
from facefuse.analysis.select import Selection
from facefuse.analysis.track import TrackerSettings
from facefuse.errors import FacefuseError
from facefuse.forking import start_forked
from facefuse.pipeline import Identity, Pipeline, Timings
from facefuse.stream import FrameResult, FrameSwapper

T = TypeVar("T")

HISTOGRAM_MS = 10_000  # latency histogram: 1 ms bins up to 10 s (fixed memory, exact to 1 ms)
MINUTES_KEPT = 60  # per-minute latency figures kept (the first minute is always kept as well)


# ---------------------------------------------------------------------------------------------
# The one-item slot
# ---------------------------------------------------------------------------------------------


class LatestSlot(Generic[T]):
    """Holds the newest item only. `put` returns the item it replaced (never taken: a drop)."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> T | None:
        with self._cond:
            if self._closed:
                return item  # nobody will take it any more
            old, self._item = self._item, item
            self._cond.notify_all()
            return old

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, or None after `timeout` or once closed and empty."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed and self._item is None

    def peek_full(self) -> bool:
        """Whether an item waits (a hint: another thread may take it at once)."""
        return self._item is not None


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


class LatencyHistogram:
    """Percentiles of a stream of latencies in fixed memory (1 ms bins; the max is kept exactly)."""

    def __init__(self) -> None:
        self.counts = np.zeros(HISTOGRAM_MS + 1, np.int64)
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.counts[min(HISTOGRAM_MS, max(0, round(ms)))] += 1
        self.max_ms = max(self.max_ms, ms)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        n = self.count
        if n == 0:
            return 0.0
        rank = max(1, int(np.ceil(q / 100 * n)))
        return float(min(np.searchsorted(np.cumsum(self.counts), rank), self.max_ms))


@dataclass
class MinuteStats:
    minute: int  # 0: the first minute of the session
    frames_out: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_max: float
    rss_mb: float | None  # resident memory of the session's processes at the minute's end (Linux)


def resident_mb(pids: Sequence[int]) -> float | None:
    """Resident memory of these processes in MiB, from /proc (None where there is no /proc)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return round(total * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


@dataclass
class LiveSummary:
    fps: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_max: float
    frames_with_faces: int
    faces_swapped: int
    duration_s: float
    stages_ms: dict[str, float]  # mean per frame that went through the stage
    sources: list[str]
    source_index: int
    source_changes: int
    ended: str  # "end of input", "quit", "camera lost", "interrupted", "error"
    minutes: list[MinuteStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LiveStats:
    """Counters, per-stage times and latency, updated from several threads under one lock."""

    def __init__(self, memory: Callable[[], float | None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._memory = memory
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self.frames_with_faces = 0
        self.faces_swapped = 0
        self.stage_ms: dict[str, float] = {}
        self.stage_n: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.first: float | None = None  # capture time of the first frame
        self.last: float | None = None  # delivery time of the last frame out
        self._minute = LatencyHistogram()
        self._minute_index = 0
        self._minute_frames = 0
        self.first_minute: MinuteStats | None = None
        self.minutes: collections.deque[MinuteStats] = collections.deque(maxlen=MINUTES_KEPT)

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            self.stage_ms[name] = self.stage_ms.get(name, 0.0) + ms
            self.stage_n[name] = self.stage_n.get(name, 0) + 1

    def arrived(self, t: float) -> None:
        with self._lock:
            self.frames_in += 1
            if self.first is None:
                self.first = t

    def dropped(self, n: int = 1) -> None:
        with self._lock:
            self.frames_dropped += n

    def swapped(self, faces_found: int, faces_swapped: int) -> None:
        with self._lock:
            self.frames_with_faces += int(faces_found > 0)
            self.faces_swapped += faces_swapped

    def delivered(self, t_capture: float, t_out: float) -> None:
        ms = 1000 * (t_out - t_capture)
        with self._lock:
            self.frames_out += 1
            self.last = t_out
            self.latency.add(ms)
            minute = int((t_out - (self.first or t_out)) // 60)
            if minute != self._minute_index:
                self._close_minute()
                self._minute_index = minute
            self._minute.add(ms)
            self._minute_frames += 1

    def _close_minute(self) -> None:
        if self._minute_frames == 0:
            return
        h = self._minute
        row = MinuteStats(
            self._minute_index,
            self._minute_frames,
            h.percentile(50),
            h.percentile(95),
            round(h.max_ms, 1),
            self._memory(),
        )
        if self.first_minute is None:
            self.first_minute = row
        else:
            self.minutes.append(row)
        self._minute = LatencyHistogram()
        self._minute_frames = 0

    def summary(self, *, sources: list[str], index: int, changes: int, ended: str) -> LiveSummary:
        with self._lock:
            self._close_minute()
            span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
            minutes = ([self.first_minute] if self.first_minute else []) + list(self.minutes)
            return LiveSummary(
                fps=round(self.frames_out / span, 2) if span > 0 else 0.0,
                frames_in=self.frames_in,
                frames_out=self.frames_out,
                frames_dropped=self.frames_dropped,
                latency_ms_p50=self.latency.percentile(50),
                latency_ms_p95=self.latency.percentile(95),
                latency_ms_max=round(self.latency.max_ms, 1),
                frames_with_faces=self.frames_with_faces,
                faces_swapped=self.faces_swapped,
                duration_s=round(span, 3),
                stages_ms={k: round(v / max(1, self.stage_n[k]), 2) for k, v in self.stage_ms.items()},
                sources=sources,
                source_index=index,
                source_changes=changes,
                ended=ended,
                minutes=minutes,
            )


# ---------------------------------------------------------------------------------------------
# The detector beside the stream
# ---------------------------------------------------------------------------------------------


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the parent ends the children in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _end_child(conn: Any, proc: Any, busy: bool = False) -> None:
    """Tell a forked child to stop (after the answer it is working on, if `busy`), give it 5 s to
    exit on its own, then end it."""
    with contextlib.suppress(OSError, BrokenPipeError):
        if busy:
            conn.poll(5.0)
        conn.send(None)
    proc.join(timeout=5)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    conn.close()


def _detector_main(pipeline: Pipeline, conn: Any) -> None:
    """Child process: frames in, detections out, until the pipe closes or says stop."""
    _ignore_interrupts()
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
        while True:
            job = conn.recv()
            if job is None:
                return
            frame, scale = job
            conn.send(pipeline.analyser.detector.run(frame, scale))


class DetectorProcess:
    """The full-frame face detector in a forked process (forked after the models loaded, so it has
    them without loading again). One frame in flight at a time; results are polled, never awaited."""

    def __init__(self, pipeline: Pipeline) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_detector_main, args=(pipeline, child), daemon=True)
        start_forked([self._proc])
        child.close()
        self.busy = False

    def submit(self, frame: np.ndarray, scale: float) -> None:
        self._conn.send((frame, scale))
        self.busy = True

    def poll(self) -> list[Detection] | None:
        """The detections of the frame in flight once they are ready, else None."""
        if not self.busy or not self._conn.poll():
            return None
        self.busy = False
        return self._conn.recv()

    def close(self) -> None:
        _end_child(self._conn, self._proc, busy=self.busy)


class DetectorThread:
    """The detector on a thread of this process, for learned models, whose sessions must not cross a
    fork. Same interface as DetectorProcess; `guard` is held while it runs, so that loading a new
    source photo (which uses the same detector) waits for it rather than running beside it."""

    def __init__(self, pipeline: Pipeline, guard: threading.Lock) -> None:
        self._detector = pipeline.analyser.detector
        self._guard = guard
        self._jobs: queue.SimpleQueue[tuple[np.ndarray, float] | None] = queue.SimpleQueue()
        self._done = threading.Event()
        self._result: list[Detection] | BaseException | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="facefuse-detect", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                with self._guard:
                    self._result = self._detector.run(*job)
            except Exception as exc:  # handed to the session thread by poll()
                self._result = exc
            self._done.set()

    def submit(self, frame: np.ndarray, scale: float) -> None:
        self._done.clear()
        self.busy = True
        self._jobs.put((frame, scale))

    def poll(self) -> list[Detection] | None:
        if not self.busy or not self._done.is_set():
            return None
        self.busy = False
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def uses_learned_models(pipeline: Pipeline) -> bool:
    """Whether any ONNX session is in the pipeline (then nothing of it may be forked)."""
    return pipeline.models.learned or pipeline.pool is not None


# ---------------------------------------------------------------------------------------------
# Where tracking and swapping run: this process, or a forked worker
# ---------------------------------------------------------------------------------------------


class LocalProcessor:
    """Tracking and swapping on the calling thread (tests, and a stand-in swapper)."""

    def __init__(
        self,
        pipeline: Pipeline,
        swapper: Any,
        identities: Sequence[Identity],
        guard: threading.Lock | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.swapper = swapper
        self.identities = list(identities)
        self.tracking = False
        self._guard = guard or contextlib.nullcontext()

    def process(
        self, image: np.ndarray, t: float, timings: Timings, detections: list[Detection] | None
    ) -> FrameResult:
        result = self.swapper.process(image, t, timings, detections=detections)
        tracker = getattr(self.swapper, "tracker", None)
        self.tracking = bool(tracker is not None and tracker.tracks)
        return result

    def use(self, index: int) -> None:
        self.swapper.set_source(self.identities[index])

    def add(self, path: str) -> None:
        with self._guard:  # the detector may be busy on its thread (learned models)
            identity = self.pipeline.source(Path(path))
        self.identities.append(identity)

    def close(self) -> None:
        pass


def _worker_main(local: LocalProcessor, conn: Any) -> None:
    """Child process: one request at a time from the session's thread, one answer each."""
    _ignore_interrupts()
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
        while (msg := conn.recv()) is not None:
            kind, args = msg
            try:
                if kind == "frame":
                    image, t, detections = args
                    timings = Timings()
                    res = local.process(image, t, timings, detections)
                    swapped = res.image if res.image is not image else None
                    reply: Any = (
                        swapped,
                        res.faces_found,
                        res.faces_swapped,
                        res.track_ids,
                        timings.ms,
                        local.tracking,
                    )
                elif kind == "use":
                    reply = local.use(args)
                else:
                    reply = local.add(args)
            except Exception as exc:
                conn.send(("error", exc))
                continue
            conn.send(("ok", reply))


class WorkerProcessor:
    """Tracking and swapping in a forked process (it inherits the loaded models and sources).

    The face work is Python-heavy and holds the GIL; beside it in one process, decoding and
    encoding threads would wait for the GIL at every step. In its own process it has a core of its
    own while this process captures and encodes. A frame goes over a pipe (~1 ms for 720p) and comes
    back only where a face was swapped.
    """

    def __init__(self, local: LocalProcessor) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(local, child), daemon=True, name="facefuse-swap")
        start_forked([self._proc])
        child.close()
        self.tracking = False

    def _call(self, kind: str, args: Any) -> Any:
        try:
            self._conn.send((kind, args))
            status, reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise FacefuseError(f"the live swap process ended unexpectedly ({type(exc).__name__})") from exc
        if status == "error":
            raise reply
        return reply

    def process(
        self, image: np.ndarray, t: float, timings: Timings, detections: list[Detection] | None
    ) -> FrameResult:
        swapped, found, n, ids, ms, self.tracking = self._call("frame", (image, t, detections))
        for name, value in ms.items():
            timings.ms[name] = timings.ms.get(name, 0.0) + value
        return FrameResult(image if swapped is None else swapped, found, n, ids)

    def use(self, index: int) -> None:
        self._call("use", index)

    def add(self, path: str) -> None:
        self._call("add", path)

    def close(self) -> None:
        _end_child(self._conn, self._proc)


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


@dataclass
class LiveSettings:
    # Seconds between detector passes while faces are tracked (new faces show up within this);
    # while none is tracked the detector runs back to back.
    detect_interval: float = 1.0
    # With learned models both run in this process instead (a thread; the session's thread).
    detector_process: bool = True  # False: detect inside the tracker (one process; for tests)
    worker_process: bool = True  # False: track and swap on the session's thread (for tests)
    min_face: int = 40  # px: smallest face the detector looks for


@dataclass
class LiveFrame:
    image: np.ndarray  # RGB uint8
    t_capture: float  # time.perf_counter() when the frame was captured (glass)
    t_media: float  # seconds on the stream's own clock, for the smoothing filters


@dataclass
class LiveResult:
    image: np.ndarray  # RGB uint8 (the input array itself when nothing was swapped)
    t_capture: float
    faces_found: int
    faces_swapped: int
    source_index: int


@dataclass
class SourceChange:
    index: int | None = None
    step: int = 0  # +1 / -1: next / previous
    path: str | None = None
    done: Future[int] = field(default_factory=Future)


class LiveSession:
    """Push frames in, take swapped frames out; latency bounded by dropping, never by queueing.

    >>> session = LiveSession(pipe, [("me.jpg", pipe.source("me.jpg"))])
    >>> session.push(rgb, time.perf_counter())          # from the capture side, any thread
    >>> result = session.latest(timeout=0.1)            # from the output side
    >>> ...show result.image...; session.delivered(result)
    >>> session.change_source(step=1)                   # any thread; applied before the next frame
    >>> summary = session.close()
    """

    def __init__(
        self,
        pipeline: Pipeline,
        sources: Sequence[tuple[str, Identity]],
        selection: Selection | None = None,
        settings: LiveSettings | None = None,
        *,
        swapper_factory: Callable[[Pipeline, Identity, Selection], FrameSwapper] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a live session needs at least one source")
        self.pipeline = pipeline
        self.settings = settings or LiveSettings()
        self.sources: list[str] = [name for name, _ in sources]
        self.index = 0
        self.changes = 0
        self.stats = LiveStats(lambda: resident_mb(self.pids))
        tracker = TrackerSettings(min_face=self.settings.min_face)
        make = swapper_factory or (lambda p, s, sel: FrameSwapper(p, s, sel, tracker=tracker))
        swapper = make(pipeline, sources[0][1], selection or Selection())
        self._tracker_settings = getattr(swapper, "tracker", None) and swapper.tracker.settings
        # onnxruntime's thread pools do not survive a fork (cli_video drops to one worker likewise).
        self.in_process = uses_learned_models(pipeline)
        guard = threading.Lock()
        local = LocalProcessor(pipeline, swapper, [ident for _, ident in sources], guard)
        self.processor: LocalProcessor | WorkerProcessor = (
            WorkerProcessor(local) if self.settings.worker_process and not self.in_process else local
        )
        self._inbox: LatestSlot[LiveFrame] = LatestSlot()
        self._outbox: LatestSlot[LiveResult] = LatestSlot()
        self._commands: queue.SimpleQueue[SourceChange] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._ended = "end of input"
        self._detector: DetectorProcess | DetectorThread | None = None
        if self.settings.detector_process:
            self._detector = DetectorThread(pipeline, guard) if self.in_process else DetectorProcess(pipeline)
        self._last_detect = -float("inf")
        self._thread = threading.Thread(target=self._run, name="facefuse-live", daemon=True)
        self._thread.start()

    # -- the capture side ---------------------------------------------------------------------

    def push(self, image: np.ndarray, t_capture: float | None = None, t_media: float | None = None) -> None:
        """Hand over a captured RGB frame; a frame still waiting from before is dropped (counted)."""
        t_capture = time.perf_counter() if t_capture is None else t_capture
        self.stats.arrived(t_capture)
        first = self.stats.first or t_capture
        frame = LiveFrame(image, t_capture, t_capture - first if t_media is None else t_media)
        if self._inbox.put(frame) is not None:
            self.stats.dropped()

    def end_input(self, reason: str = "end of input") -> None:
        """No more frames will come: the frame waiting is still processed, then `latest` returns None."""
        self._ended = reason
        self._inbox.close()

    # -- the output side ----------------------------------------------------------------------

    def latest(self, timeout: float | None = None) -> LiveResult | None:
        """The newest swapped frame not taken yet (older ones are dropped), or None after `timeout`."""
        self._raise_error()
        return self._outbox.take(timeout)

    def delivered(self, result: LiveResult, t_out: float | None = None) -> None:
        """Report a frame shown or written: its glass-to-glass latency counts from here."""
        self.stats.delivered(result.t_capture, time.perf_counter() if t_out is None else t_out)

    @property
    def finished(self) -> bool:
        """The input ended and every frame has been taken."""
        return self._outbox.closed

    # -- control ------------------------------------------------------------------------------

    def change_source(
        self, *, index: int | None = None, step: int = 0, path: str | None = None
    ) -> Future[int]:
        """Switch to source `index`, `step` away from the current one, or a new photo at `path`
        (analysed once on the processing thread; models are not loaded again). The future gives
        the new source index, or the error (e.g. NoSourceFace) for a bad photo or index."""
        change = SourceChange(index, step, path)
        if self._outbox.closed or not self._thread.is_alive():
            change.done.set_exception(FacefuseError("the live session has ended"))
        else:
            self._commands.put(change)
        return change.done

    @property
    def pids(self) -> list[int]:
        """This process and the session's worker processes."""
        pids = [os.getpid()]
        for proc in (self.processor, self._detector):
            pid = getattr(getattr(proc, "_proc", None), "pid", None)
            if pid is not None:
                pids.append(pid)
        return pids

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    def close(self, ended: str | None = None) -> LiveSummary:
        """Stop processing (frames in flight are dropped), end the detector, and sum up."""
        if ended is not None:
            self._ended = ended
        self._inbox.close()
        self._thread.join()
        while (left := self._outbox.take(0)) is not None:
            self.stats.dropped()
            del left
        ended = "error" if self._error is not None else self._ended
        # Summed up while the worker processes still run, so the last minute's memory includes them.
        summary = self.stats.summary(
            sources=self.source_names, index=self.index, changes=self.changes, ended=ended
        )
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        self.processor.close()
        while True:
            try:
                self._commands.get_nowait().done.set_exception(FacefuseError("the live session has ended"))
            except queue.Empty:
                break
        return summary

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the processing thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._apply_commands()
                frame = self._inbox.take(timeout=0.05)
                if frame is None:
                    if self._inbox.closed:
                        break
                    continue
                result = self._process(frame)
                if self._outbox.put(result) is not None:
                    self.stats.dropped()
        except BaseException as exc:
            self._error = exc
        finally:
            self._outbox.close()

    def _process(self, frame: LiveFrame) -> LiveResult:
        timings = Timings()
        detections = self._detections(frame)
        result = self.processor.process(frame.image, frame.t_media, timings, detections)
        self.stats.stage("analyse", timings.ms.get("track", 0.0) + timings.ms.get("select", 0.0))
        self.stats.stage("swap", timings.ms.get("swap", 0.0))
        self.stats.swapped(result.faces_found, result.faces_swapped)
        return LiveResult(result.image, frame.t_capture, result.faces_found, result.faces_swapped, self.index)

    def _detections(self, frame: LiveFrame) -> list[Detection] | None:
        """Boxes that came back from the detector process (an empty list when none did this frame),
        after handing it the current frame when it is idle and a pass is due."""
        det = self._detector
        if det is None:
            return None
        found = det.poll()
        now = frame.t_capture
        tracking = self.processor.tracking
        if not det.busy and (not tracking or now - self._last_detect >= self.settings.detect_interval):
            _, fine = (self._tracker_settings or TrackerSettings()).scales(frame.image.shape)
            det.submit(frame.image, fine)
            self._last_detect = now
        return found or []

    def _apply_commands(self) -> None:
        while True:
            try:
                change = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                change.done.set_result(self._apply(change))
            except BaseException as exc:  # reported to whoever asked; the stream goes on
                change.done.set_exception(exc)

    def _apply(self, change: SourceChange) -> int:
        if change.path is not None:
            if change.path in self.sources:
                index = self.sources.index(change.path)
            else:
                self.processor.add(change.path)
                self.sources.append(change.path)
                index = len(self.sources) - 1
        elif change.index is not None:
            if not -len(self.sources) <= change.index < len(self.sources):
                raise FacefuseError(f"no source {change.index}: there are {len(self.sources)} (0..)")
            index = change.index % len(self.sources)
        else:
            index = (self.index + change.step) % len(self.sources)
        if index != self.index:
            self.index = index
            self.changes += 1
            self.processor.use(index)
        return index
