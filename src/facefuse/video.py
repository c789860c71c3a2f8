"""The video job: decode -> analyse and swap -> encode, in segments that survive a crash.

A video is cut into segments of a fixed number of frames. Each segment is decoded, processed and
encoded on its own (the per-stream swapper is reset at its start, the encoder starts a fresh GOP), so
a segment's bytes depend only on its frames and the job's settings. Finished segments are renamed
into a hidden work folder beside the output (`.OUT.mp4.parts/`) one by one; `--resume` skips those
and yields the same result as an uninterrupted run. Only at the end are the segments and the audio
muxed (no re-encode) into a temporary file, labelled, signed and renamed onto the output, so nothing
half-written ever appears at the output path.

Concurrency: within a segment a decode thread and an encode thread run beside the swapping thread,
linked by bounded queues (memory stays flat whatever the length). Across segments, worker processes
(forked after the models are loaded, so each has them without loading again) share the cores: the
face work is partly Python and holds the GIL, which threads alone cannot spread over two cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np

from facefuse.errors import (
    EmptyVideo,
    ExitCode,
    FacefuseError,
    Interrupted,
    NoMatch,
    NoTargetFace,
    OutputWriteFailed,
    ResumeMismatch,
)
from facefuse.forking import start_forked
from facefuse.fsutil import fsync_dir
from facefuse.media import video as media
from facefuse.media.image import _current_umask
from facefuse.pipeline import Timings

QUEUE_DEPTH = 6  # frames in flight between stages: enough to ride out jitter, small for 4K memory
# Frames a batching processor (a learned swapper) holds at once, input and output together, at most
# this many bytes: 1080p allows 43 frames, 4K 10, whatever --batch-frames asks for.
BATCH_MEMORY = 512 << 20
# Automatic segments: at most this long (work lost to a crash, frames between tracker resets), and
# an even count so two workers finish together on a short clip.
MAX_SEGMENT_FRAMES = 300
PROGRESS_INTERVAL_S = 0.25
HASH_CHUNK = 1 << 20
PR_SET_PDEATHSIG = 1


class FrameProcessor(Protocol):
    """What the job needs from the per-stream swapper (facefuse.stream.FrameSwapper).

    A processor with `batch_frames` > 1 also has `process_batch(frames, timings)`: consecutive
    (rgb, t) pairs in, one result each out, as `process` would give them one by one.
    """

    def process(self, frame: np.ndarray, t: float, timings: Timings | None = None) -> Any: ...

    def reset(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Options and the output timeline
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeSpec:
    """A point in the input: seconds ("12.5", "12.5s") or a frame index ("300f")."""

    value: float
    frames: bool = False

    @classmethod
    def parse(cls, text: str) -> TimeSpec:
        raw = text.strip().lower()
        frames = raw.endswith("f")
        number = raw[:-1] if frames or raw.endswith("s") else raw
        try:
            value = int(number) if frames else float(number)
        except ValueError:
            raise ValueError(f"{text!r}: expected seconds (12.5 or 12.5s) or a frame number (300f)") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{text!r}: must not be negative")
        return cls(float(value), frames)

    def index(self, info: media.VideoInfo) -> int:
        """The first frame at or after this point."""
        if self.frames:
            return min(int(self.value), info.frame_count)
        return info.index_at(self.value)

    def __str__(self) -> str:
        return f"{int(self.value)}f" if self.frames else f"{self.value}s"


@dataclass(frozen=True)
class VideoOptions:
    encoder: media.EncoderSettings = field(default_factory=media.EncoderSettings)
    fps: Fraction | None = None
    size: tuple[int, int] | None = None  # displayed width, height; -1 keeps the aspect ratio
    trim_start: TimeSpec | None = None
    trim_end: TimeSpec | None = None
    segment_frames: int = 0  # 0: automatic (see `auto_segment_frames`)
    workers: int = 0  # processes; 0: one per core

    def key(self) -> dict[str, Any]:
        """What decides the output's bytes (not `workers`: any count gives the same segments)."""
        return {
            "encoder": asdict(self.encoder),
            "fps": str(self.fps) if self.fps else None,
            "size": list(self.size) if self.size else None,
            "trim_start": str(self.trim_start) if self.trim_start else None,
            "trim_end": str(self.trim_end) if self.trim_end else None,
            "segment_frames": self.segment_frames,
        }


@dataclass(frozen=True)
class Segment:
    index: int
    first: int  # input frame indexes [first, stop)
    stop: int


@dataclass(frozen=True)
class Timeline:
    """Which input frames are kept and the output timestamps each one becomes.

    Without --fps every kept frame keeps its own pts (shifted by the trim), so variable frame rate
    stays variable. With --fps, output frame k is shown at start + k/fps and takes the input frame
    on screen at that moment: frames are repeated or dropped, never blended.
    """

    info: media.VideoInfo
    first: int
    stop: int
    fps: Fraction | None
    shift_pts: int  # input time-base units subtracted from every timestamp (the trim start)

    @property
    def time_base(self) -> Fraction:
        return 1 / self.fps if self.fps else self.info.time_base

    @property
    def shift_seconds(self) -> float:
        return float(self.shift_pts * self.info.time_base)

    def out_pts(self, index: int) -> list[int]:
        info = self.info
        if self.fps is None:
            return [info.pts[index] - self.shift_pts]
        base = (info.pts[self.first] - self.shift_pts) * info.time_base
        begin = (info.pts[index] - self.shift_pts) * info.time_base
        end = (
            (info.pts[index + 1] - self.shift_pts) * info.time_base
            if index + 1 < info.frame_count
            else begin + info.last_duration * info.time_base
        )
        k0 = math.ceil((begin - base) * self.fps)
        k1 = math.ceil((end - base) * self.fps)
        offset = round(base * self.fps)
        return [offset + k for k in range(k0, k1)]

    @property
    def output_frames(self) -> int:
        """How many frames the output has (with --fps: the kept span's duration times the rate)."""
        if self.fps is None:
            return self.stop - self.first
        info = self.info
        start = info.pts[self.first]
        end = info.pts[self.stop] if self.stop < info.frame_count else info.pts[-1] + info.last_duration
        return max(1, math.ceil((end - start) * info.time_base * self.fps))

    def segments(self, size: int) -> list[Segment]:
        size = size or auto_segment_frames(self.stop - self.first)
        starts = range(self.first, self.stop, size)
        return [Segment(i, s, min(s + size, self.stop)) for i, s in enumerate(starts)]


def auto_segment_frames(frames: int) -> int:
    """An even number of equal segments of at most MAX_SEGMENT_FRAMES; depends on the length only."""
    count = 2 * math.ceil(frames / (2 * MAX_SEGMENT_FRAMES))
    return max(1, math.ceil(frames / count))


def make_timeline(info: media.VideoInfo, options: VideoOptions) -> Timeline:
    first = options.trim_start.index(info) if options.trim_start else 0
    stop = options.trim_end.index(info) if options.trim_end else info.frame_count
    if first >= stop:
        raise EmptyVideo(
            f"{info.path}: no frames between --trim-start and --trim-end "
            f"(frames {first}..{stop} of {info.frame_count})"
        )
    shift = info.pts[first] if options.trim_start else 0
    return Timeline(info, first, stop, options.fps, shift)


def output_geometry(info: media.VideoInfo, options: VideoOptions, timeline: Timeline) -> media.OutputGeometry:
    width, height = info.width, info.height
    if options.size:
        width, height = _scaled_size(info, options.size)
    rate = options.fps or info.rate
    return media.OutputGeometry(width, height, timeline.time_base, rate, info.color, info.display_matrix)


def _scaled_size(info: media.VideoInfo, size: tuple[int, int]) -> tuple[int, int]:
    """Coded width, height for a displayed size; -1 follows the aspect ratio; even for 4:2:0."""
    turned = info.rotation in (90, 270)
    shown_w, shown_h = (info.height, info.width) if turned else (info.width, info.height)
    w, h = size
    if w < 0:
        w = round(shown_w * h / shown_h)
    if h < 0:
        h = round(shown_h * w / shown_w)
    w, h = max(2, w - w % 2), max(2, h - h % 2)
    return (h, w) if turned else (w, h)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class SegmentStats:
    index: int
    frames_in: int = 0  # frames of the input in this segment
    frames_decoded: int = 0
    frames_out: int = 0
    frames_with_faces: int = 0
    faces_found: int = 0
    faces_swapped: int = 0
    first_pts: int | None = None  # output pts of the segment's first frame
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def frames_broken(self) -> int:
        return self.frames_in - self.frames_decoded


@dataclass
class VideoSummary:
    output: str
    frames_in: int
    frames_out: int
    frames_broken: int
    frames_with_faces: int
    faces_found: int
    faces_swapped: int
    segments: int
    segments_resumed: int
    wall_s: float
    fps: float
    stages_ms: dict[str, float]
    audio: str
    audio_duration_s: float
    input: dict[str, Any]
    encoder: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _add_ms(total: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + value


# ---------------------------------------------------------------------------------------------
# The work folder: manifest, finished segments, lock
# ---------------------------------------------------------------------------------------------


class WorkFolder:
    """`.OUT.mp4.parts/` beside the output: the manifest, finished segments and their statistics."""

    def __init__(self, output: Path) -> None:
        self.path = output.parent / f".{output.name}.parts"
        self._lock_fd: int | None = None

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    def segment(self, index: int) -> Path:
        return self.path / f"segment-{index:05d}.mp4"

    def stats(self, index: int) -> Path:
        return self.path / f"segment-{index:05d}.json"

    def temp(self, name: str) -> Path:
        return self.path / f"{name}.{os.getpid()}.tmp"

    def prepare(self, key: dict[str, Any], resume: bool) -> None:
        """Create the folder (or keep it for --resume when its manifest matches `key`), then lock it."""
        if self.path.exists() and resume:
            found = self._read_manifest()
            if found != key:
                raise ResumeMismatch(
                    f"{self.path}: holds unfinished work of a different job "
                    f"({_first_difference(found, key)}); run without --resume to start over"
                )
        elif self.path.exists():
            self._lock()  # never delete the work of a run that is still going
            self._unlock()
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(exist_ok=True)
            self._lock()
            for stale in self.path.glob("*.tmp"):
                stale.unlink()
            if not self.manifest.exists():
                _write_json_atomically(self.manifest, key)
        except OSError as exc:
            raise OutputWriteFailed(
                f"{self.path}: cannot create the work folder ({exc.strerror or exc})"
            ) from exc

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return None

    def _lock(self) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644) if self.path.is_dir() else None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputWriteFailed(f"{self.path}: another facefuse run is writing this output") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finished(self, index: int) -> SegmentStats | None:
        """The statistics of segment `index` if its file was committed."""
        if not self.segment(index).exists():
            return None
        try:
            return SegmentStats(**json.loads(self.stats(index).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def commit(self, index: int, encoded: Path, stats: SegmentStats) -> None:
        """Make a segment count as done: statistics first, then the segment file (the commit point)."""
        _write_json_atomically(self.stats(index), asdict(stats))
        with open(encoded, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(encoded, self.segment(index))
        fsync_dir(self.path)

    def remove(self) -> None:
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)

    def clean_temps(self) -> None:
        for stale in self.path.glob("*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        self._unlock()


def _first_difference(found: dict[str, Any] | None, key: dict[str, Any]) -> str:
    if not found:
        return "no readable manifest"
    for name in key:
        if found.get(name) != key[name]:
            return f"{name} differs"
    return "manifest differs"


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and SHA-256 of a file: an edited input must not be resumed into an old output."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest.hexdigest(),
    }


# ---------------------------------------------------------------------------------------------
# One segment: decode thread -> process (this thread) -> encode thread
# ---------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    frame: av.VideoFrame
    rgb: np.ndarray | None  # upright RGB when a processor will look at it
    out_pts: list[int]
    time: float


@dataclass
class _Patch:
    """A swapped frame to encode as its decoded self with only the changed pixels replaced."""

    decoded: av.VideoFrame
    before: np.ndarray  # the RGB the processor was given
    after: np.ndarray  # what it returned


_END = object()


class SegmentRunner:
    """Runs segments in the current process. One per worker: it owns a decoder and the processor."""

    def __init__(
        self,
        timeline: Timeline,
        geometry: media.OutputGeometry,
        encoder: media.EncoderSettings,
        work: WorkFolder,
        make_processor: Callable[[], FrameProcessor] | None,
    ) -> None:
        self.timeline = timeline
        self.geometry = geometry
        self.encoder = encoder
        self.work = work
        self.make_processor = make_processor
        self._processor: FrameProcessor | None = None
        self._reader: media.FrameReader | None = None
        self._index_of = {p: i for i, p in enumerate(timeline.info.pts)}
        info = timeline.info
        # Swapped frames can be patched into the decoded YUV when nothing else about them changes.
        self._patchable = (
            info.rotation == 0
            and (geometry.width, geometry.height) == (info.width, info.height)
            and geometry.pix_fmt == "yuv420p"
            and info.width % 2 == 0
            and info.height % 2 == 0
            and media.patchable_colour(geometry.color)
        )
        self._to_yuv = media.rgb_to_yuv_matrix(geometry.color) if self._patchable else None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def run(self, segment: Segment, progress: Callable[[int], None]) -> SegmentStats:
        """Encode `segment` into its own file and commit it to the work folder."""
        if self._reader is None:
            self._reader = media.FrameReader(self.timeline.info)
        if self.make_processor is not None and self._processor is None:
            self._processor = self.make_processor()
        if self._processor is not None:
            self._processor.reset()  # a segment must not depend on the frames before it
        stats = SegmentStats(segment.index, frames_in=segment.stop - segment.first)
        tmp = self.work.temp(self.work.segment(segment.index).name)
        encoder = media.SegmentEncoder(tmp, self.encoder, self.geometry)
        try:
            self._pipeline(segment, encoder, stats, progress)
            t0 = time.perf_counter()
            encoder.close()
            stats.first_pts = encoder.first_pts
            _add_ms(stats.stage_ms, {"encode": 1000 * (time.perf_counter() - t0)})
        except BaseException:
            encoder.abort()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.work.commit(segment.index, tmp, stats)
        return stats

    def _pipeline(
        self,
        segment: Segment,
        encoder: media.SegmentEncoder,
        stats: SegmentStats,
        progress: Callable[[int], None],
    ) -> None:
        decoded: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        to_encode: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        stop = threading.Event()
        errors: list[BaseException] = []
        timings = Timings()
        threads = [
            threading.Thread(
                target=self._guard, args=(self._decode, errors, stop, segment, decoded, stop, timings)
            ),
            threading.Thread(
                target=self._guard, args=(self._encode, errors, stop, encoder, to_encode, stop, timings)
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            self._process(decoded, to_encode, stop, stats, timings, progress)
        finally:
            if errors or sys.exc_info()[0] is not None:
                stop.set()
            _put(to_encode, _END, stop)
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        _add_ms(stats.stage_ms, timings.ms)

    @staticmethod
    def _guard(
        target: Callable[..., None], errors: list[BaseException], stop: threading.Event, *args: Any
    ) -> None:
        try:
            target(*args)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def _decode(
        self, segment: Segment, out: queue.Queue[Any], stop: threading.Event, timings: Timings
    ) -> None:
        info = self.timeline.info
        frames = self._reader.frames(segment.first, segment.stop)
        try:
            while not stop.is_set():
                with timings.stage("decode"):
                    frame = next(frames, None)
                    if frame is None:
                        break
                    index = self._index_of.get(frame.pts)
                    if index is None:
                        continue
                    out_pts = self.timeline.out_pts(index)
                    if not out_pts:
                        continue  # dropped by a lower --fps: no need to look at it
                    rgb = None
                    if self.make_processor is not None:
                        rgb = media.upright(media.frame_to_rgb(frame), info.rotation)
                item = _Decoded(frame, rgb, out_pts, float(frame.pts * info.time_base))
                if not _put(out, item, stop):
                    return
        finally:
            _put(out, _END, stop)

    def _process(
        self,
        decoded: queue.Queue[Any],
        to_encode: queue.Queue[Any],
        stop: threading.Event,
        stats: SegmentStats,
        timings: Timings,
        progress: Callable[[int], None],
    ) -> None:
        window = self._window()
        if window > 1:
            self._process_batched(window, decoded, to_encode, stop, stats, timings, progress)
            return
        while not stop.is_set():
            item = _get(decoded, stop)
            if item is _END or item is None:
                return
            result = None
            if self._processor is not None and item.rgb is not None:
                result = self._processor.process(item.rgb, item.time, timings)
            if not self._emit(item, result, to_encode, stop, stats):
                return
            progress(1)

    def _window(self) -> int:
        """How many frames go to the processor at once: its `batch_frames`, bounded by BATCH_MEMORY."""
        wanted = int(getattr(self._processor, "batch_frames", 1))
        if wanted <= 1:
            return 1
        info = self.timeline.info
        return max(1, min(wanted, BATCH_MEMORY // (2 * 3 * info.width * info.height)))

    def _process_batched(
        self,
        window: int,
        decoded: queue.Queue[Any],
        to_encode: queue.Queue[Any],
        stop: threading.Event,
        stats: SegmentStats,
        timings: Timings,
        progress: Callable[[int], None],
    ) -> None:
        """A look-ahead of up to `window` decoded frames, swapped together, encoded in order."""
        ended = False
        while not ended and not stop.is_set():
            items: list[_Decoded] = []
            while len(items) < window:
                item = _get(decoded, stop)
                if item is _END or item is None:
                    ended = True
                    break
                items.append(item)
            if not items or stop.is_set():
                return
            results = self._processor.process_batch([(it.rgb, it.time) for it in items], timings)
            for item, result in zip(items, results, strict=True):
                if not self._emit(item, result, to_encode, stop, stats):
                    return
            progress(len(items))

    def _patches(self, frame: av.VideoFrame) -> bool:
        """Whether this decoded frame can take a patch: plain 4:2:0 and the stream's own colour tags
        (it was converted to RGB with its own; the patch is made with the stream's)."""
        color = self.geometry.color
        return (
            frame.format.name == "yuv420p"
            and int(frame.color_range) == color.range
            and int(frame.colorspace) == color.space
        )

    def _emit(
        self,
        item: _Decoded,
        result: Any | None,
        to_encode: queue.Queue[Any],
        stop: threading.Event,
        stats: SegmentStats,
    ) -> bool:
        """Count one frame and queue it for the encoder (as decoded when `result` is None or changed
        nothing); False if the pipeline is stopping."""
        stats.frames_decoded += 1
        payload: av.VideoFrame | np.ndarray | _Patch = item.frame
        if result is not None:
            stats.faces_found += result.faces_found
            stats.faces_swapped += result.faces_swapped
            stats.frames_with_faces += int(result.faces_found > 0)
            if result.image is not item.rgb:
                if self._patchable and item.rgb is not None and self._patches(item.frame):
                    payload = _Patch(item.frame, item.rgb, result.image)
                else:
                    payload = media.coded(result.image, self.timeline.info.rotation)
        stats.frames_out += len(item.out_pts)
        return _put(to_encode, (payload, item.out_pts), stop)

    def _encode(
        self, encoder: media.SegmentEncoder, items: queue.Queue[Any], stop: threading.Event, timings: Timings
    ) -> None:
        geometry, info = self.geometry, self.timeline.info
        # Faces are found and swapped at the input's size; --resolution applies to the output only.
        size = None if (geometry.width, geometry.height) == (info.width, info.height) else geometry
        while True:
            item = _get(items, stop)
            if item is _END or item is None:
                return
            payload, out_pts = item
            with timings.stage("encode"):
                # Frames without a swap go to the encoder as decoded (no RGB round trip), and swapped
                # ones, where they can, as decoded with only the changed pixels converted.
                if isinstance(payload, _Patch):
                    box = media.changed_box(payload.before, payload.after)
                    frame = (
                        payload.decoded
                        if box is None
                        else media.patch_yuv420(payload.decoded, payload.after, box, self._to_yuv)
                    )
                elif isinstance(payload, av.VideoFrame):
                    frame = (
                        payload if size is None else payload.reformat(width=size.width, height=size.height)
                    )
                else:
                    frame = media.rgb_to_frame(
                        payload, geometry.color, size=(geometry.width, geometry.height)
                    )
                for pts in out_pts:
                    encoder.encode(frame, pts)


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless the pipeline is stopping; False if it stopped first. The end marker always goes in."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set():
                if item is _END:
                    with contextlib.suppress(queue.Empty):
                        q.get_nowait()
                    continue
                return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return None


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the parent dies (a SIGKILLed job must not leave orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker_main(runner: SegmentRunner, tasks: Any, results: Any, done_frames: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()

    def progress(n: int) -> None:
        with done_frames.get_lock():
            done_frames.value += n

    try:
        while (segment := tasks.get()) is not None:
            results.put(("done", runner.run(segment, progress)))
    except BaseException as exc:
        results.put(("error", _picklable(exc)))
    finally:
        runner.close()


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return FacefuseError(f"{type(exc).__name__}: {exc}", ExitCode.INTERNAL)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar with fps and ETA on stderr, drawn only on a terminal."""

    def __init__(
        self, total: int, enabled: bool, already: int = 0, hook: Callable[[int, int], None] | None = None
    ) -> None:
        self.total = total
        self.enabled = enabled
        # Called with (done, total) on every update; it may raise to stop the job (a service cancel).
        self.hook = hook
        self.done = already
        self._start_done = already
        self._t0 = time.perf_counter()
        self._last_draw = 0.0

    def set(self, done: int) -> None:
        self.done = done
        if self.hook is not None:
            self.hook(done, self.total)
        now = time.perf_counter()
        if self.enabled and now - self._last_draw >= PROGRESS_INTERVAL_S:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-6)
        fps = (self.done - self._start_done) / elapsed
        eta = (self.total - self.done) / fps if fps > 0 else float("nan")
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        eta_text = f"{eta:4.0f}s" if math.isfinite(eta) else "   ?"
        bar = "#" * filled + "-" * (width - filled)
        print(
            f"\r[{bar}] {self.done}/{self.total} frames {fps:5.1f} fps ETA {eta_text}",
            end="",
            file=sys.stderr,
        )

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            print(file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoJob:
    """One input video -> one labelled, signed output video.

    `make_processor` builds the per-stream swapper (once per worker); None re-encodes without
    looking at the frames (the benchmark's floor). `key` names everything else that decides the
    output (sources, selection, swapper) for the resume check.
    """

    info: media.VideoInfo
    output: Path
    options: VideoOptions
    make_processor: Callable[[], FrameProcessor] | None
    key: dict[str, Any] = field(default_factory=dict)
    source_type: str = "compositeWithTrainedAlgorithmicMedia"
    require_swap: bool = True
    show_progress: bool = False
    # (frames done, frames total) as frames finish; raising from it stops the job like an interrupt
    # does, except that the exception propagates as it is (finished segments are kept for a resume).
    on_progress: Callable[[int, int], None] | None = None

    def run(self, *, resume: bool = False, t_start: float | None = None) -> VideoSummary:
        t_start = time.perf_counter() if t_start is None else t_start
        container = media.video_container(self.output)
        timeline = make_timeline(self.info, self.options)
        geometry = output_geometry(self.info, self.options, timeline)
        segments = timeline.segments(self.options.segment_frames)
        work = WorkFolder(self.output)
        work.prepare(self._manifest(), resume)
        try:
            results = {s.index: st for s in segments if (st := work.finished(s.index)) is not None}
            resumed = len(results)
            pending = [s for s in segments if s.index not in results]
            runner = SegmentRunner(timeline, geometry, self.options.encoder, work, self.make_processor)
            total = timeline.stop - timeline.first
            already = sum(r.frames_in for r in results.values())
            progress = Progress(total, self.show_progress, already, hook=self.on_progress)
            if self.on_progress is not None:
                self.on_progress(already, total)
            for stats in self._run_segments(runner, pending, progress):
                results[stats.index] = stats
            progress.finish()
            ordered = [results[s.index] for s in segments]
            try:
                self._check_frames(ordered)
            except FacefuseError:
                work.remove()  # the job is complete and has nothing to show: no work worth resuming
                raise
            mux_stats, mux_ms = self._finish(work, segments, ordered, timeline, container)
        except KeyboardInterrupt:
            work.clean_temps()
            raise Interrupted(
                f"interrupted; nothing was written at {self.output}; finished segments are kept in "
                f"{work.path} (rerun with --resume to continue)"
            ) from None
        except BaseException:
            work.clean_temps()
            raise
        work.remove()
        return self._summary(ordered, resumed, mux_stats, mux_ms, time.perf_counter() - t_start)

    def _manifest(self) -> dict[str, Any]:
        return {
            "facefuse": _version(),
            "input": file_fingerprint(self.info.path),
            "options": self.options.key(),
            "job": self.key,
            "swap": self.make_processor is not None,
        }

    def _workers(self, pending: int) -> int:
        wanted = self.options.workers or (os.cpu_count() or 1)
        can_fork = "fork" in mp.get_all_start_methods()
        return max(1, min(wanted, pending)) if can_fork else 1

    def _run_segments(
        self, runner: SegmentRunner, pending: list[Segment], progress: Progress
    ) -> Iterator[SegmentStats]:
        if not pending:
            return
        workers = self._workers(len(pending))
        if workers == 1:
            try:
                for segment in pending:
                    yield runner.run(segment, lambda n: progress.set(progress.done + n))
            finally:
                runner.close()
            return
        yield from self._run_parallel(runner, pending, progress, workers)

    def _run_parallel(
        self, runner: SegmentRunner, pending: list[Segment], progress: Progress, workers: int
    ) -> Iterator[SegmentStats]:
        ctx = mp.get_context("fork")
        tasks, results = ctx.Queue(), ctx.Queue()
        done_frames = ctx.Value("q", 0)
        for segment in pending:
            tasks.put(segment)
        for _ in range(workers):
            tasks.put(None)
        # Forked, not spawned: the children share the loaded models and need no pickling.
        procs = [
            ctx.Process(target=_worker_main, args=(runner, tasks, results, done_frames), daemon=True)
            for _ in range(workers)
        ]
        start_forked(procs)
        base = progress.done
        remaining = len(pending)
        try:
            while remaining:
                try:
                    kind, payload = results.get(timeout=PROGRESS_INTERVAL_S)
                except queue.Empty:
                    progress.set(base + done_frames.value)
                    if not any(p.is_alive() for p in procs):
                        raise FacefuseError(
                            "a video worker process died unexpectedly", ExitCode.INTERNAL
                        ) from None
                    continue
                if kind == "error":
                    raise payload
                remaining -= 1
                progress.set(base + done_frames.value)
                yield payload
        finally:
            for proc in procs:
                if proc.is_alive() and remaining:
                    proc.terminate()
                proc.join()
            tasks.close()
            results.close()

    def _check_frames(self, stats: list[SegmentStats]) -> None:
        decoded = sum(s.frames_decoded for s in stats)
        if decoded == 0:
            raise EmptyVideo(f"{self.info.path}: not one frame could be decoded")
        if not self.require_swap:
            return
        if sum(s.faces_found for s in stats) == 0:
            raise NoTargetFace(f"{self.info.path}: no face found in any frame of the target")
        if sum(s.faces_swapped for s in stats) == 0:
            raise NoMatch(
                f"{self.info.path}: faces were found but none was selected (check --index / references)"
            )

    def _finish(
        self,
        work: WorkFolder,
        segments: list[Segment],
        stats: list[SegmentStats],
        timeline: Timeline,
        container: media.VideoContainer,
    ) -> tuple[media.MuxStats, float]:
        """Mux, label, sign into the work folder, then rename onto the output in one step."""
        t0 = time.perf_counter()
        parts = [(work.segment(s.index), st.first_pts) for s, st in zip(segments, stats, strict=True)]
        parts = [(path, first) for path, first in parts if first is not None]  # all frames broken: none
        audio = self._audio_plan(timeline)
        unsigned = work.temp(f"unsigned{self.output.suffix}")
        signed = work.temp(f"signed{self.output.suffix}")
        mux = media.mux_output(parts, audio, self.info.path, unsigned, container, self.info.display_matrix)
        media.sign_video(
            unsigned, signed, container=container, title=self.output.name, source_type=self.source_type
        )
        try:
            os.chmod(signed, 0o666 & ~_current_umask())
            os.replace(signed, self.output)
        except OSError as exc:
            raise OutputWriteFailed(f"{self.output}: cannot write ({exc.strerror or exc})") from exc
        fsync_dir(self.output.parent)
        return mux, 1000 * (time.perf_counter() - t0)

    def _audio_plan(self, timeline: Timeline) -> media.AudioPlan | None:
        info = self.info
        if info.audio is None:
            return None
        trimmed_start = self.options.trim_start is not None
        trimmed_end = self.options.trim_end is not None
        start = info.time(timeline.first) if trimmed_start else -math.inf
        end = info.time(timeline.stop) if trimmed_end else None
        return media.AudioPlan(info.audio, start, end, timeline.shift_seconds)

    def _summary(
        self, stats: list[SegmentStats], resumed: int, mux: media.MuxStats, mux_ms: float, wall: float
    ) -> VideoSummary:
        stages: dict[str, float] = {}
        for s in stats:
            _add_ms(stages, s.stage_ms)
        stages["mux_sign"] = mux_ms
        frames_in = sum(s.frames_in for s in stats)
        return VideoSummary(
            output=str(self.output),
            frames_in=frames_in,
            frames_out=sum(s.frames_out for s in stats),
            frames_broken=sum(s.frames_broken for s in stats),
            frames_with_faces=sum(s.frames_with_faces for s in stats),
            faces_found=sum(s.faces_found for s in stats),
            faces_swapped=sum(s.faces_swapped for s in stats),
            segments=len(stats),
            segments_resumed=resumed,
            wall_s=round(wall, 3),
            fps=round(frames_in / wall, 2) if wall > 0 else 0.0,
            stages_ms={k: round(v, 1) for k, v in stages.items()},
            audio=mux.audio,
            audio_duration_s=round(mux.audio_duration, 3),
            input=self.info.summary(),
            encoder={
                "codec": self.options.encoder.codec,
                "crf": self.options.encoder.effective_crf,
                "preset": self.options.encoder.effective_preset,
            },
        )


def _version() -> str:
    import facefuse

    return facefuse.__version__
