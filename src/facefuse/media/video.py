"""Video in and out through FFmpeg's libraries (PyAV): probe, streaming decode, segment encode, final mux.

Nothing here writes frames to disk as images and nothing runs an ffmpeg binary. Decoding turns every
way an untrusted file can be wrong into one of facefuse's documented errors; a frame that cannot be
decoded in the middle of a good file is skipped and counted, not fatal. Encoding keeps the input's
time base and frame timestamps (variable frame rate stays variable), its display matrix (rotation)
and its colour tags. The final mux copies the encoded segments and the audio without re-encoding
the video, adds the AI-generated label to the container metadata and signs a C2PA manifest.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import cv2
import numpy as np

from facefuse.errors import (
    EmptyVideo,
    ExitCode,
    FacefuseError,
    InputInvalid,
    InputMissing,
    NoVideoStream,
    OutputWriteFailed,
)
from facefuse.media import labels


@dataclass(frozen=True)
class VideoContainer:
    """An output container facefuse can label: FFmpeg's muxer name and the MIME type c2pa signs."""

    muxer: str
    mime_type: str
    # Audio codecs this container takes as they are; anything else is re-encoded to AAC.
    audio_copy: frozenset[str]


_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
VIDEO_OUTPUTS = {
    ".mp4": VideoContainer("mp4", "video/mp4", _MP4_AUDIO),
    ".m4v": VideoContainer("mp4", "video/mp4", _MP4_AUDIO),
    ".mov": VideoContainer(
        "mov", "video/quicktime", _MP4_AUDIO | {"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"}
    ),
}
# Readable video containers whose outputs could not carry a C2PA manifest (c2pa signs BMFF only).
UNLABELLABLE_VIDEO_OUTPUTS = frozenset({".mkv", ".webm", ".avi", ".ts", ".flv"})

# Short names on the command line -> FFmpeg encoder, default CRF, default preset.
ENCODERS: dict[str, tuple[str, int, str | None]] = {
    "h264": ("libx264", 18, "veryfast"),
    "h265": ("libx265", 22, "veryfast"),
    "vp9": ("libvpx-vp9", 32, "realtime"),
    "av1": ("libsvtav1", 35, "10"),
}
# A stream whose frame durations differ by more than this is reported as variable frame rate.
VFR_TOLERANCE = 0.02
# Units of the display matrix: 16.16 fixed point for a/b/c/d, 2.30 for the last column.
DISPLAY_MATRIX_BYTES = 36


def available_encoders() -> list[str]:
    """The short encoder names this FFmpeg build can use."""
    return [name for name, (codec, _, _) in ENCODERS.items() if codec in av.codecs_available]


def video_container(path: str | Path) -> VideoContainer:
    """The container for an output path; FacefuseError(USAGE) if it cannot carry the label."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_OUTPUTS:
        return VIDEO_OUTPUTS[suffix]
    supported = ", ".join(sorted(VIDEO_OUTPUTS))
    if suffix in UNLABELLABLE_VIDEO_OUTPUTS:
        raise FacefuseError(
            f"{path}: cannot write {suffix} video: it cannot carry a signed C2PA manifest, and every "
            f"output must be labelled; use one of {supported}",
            ExitCode.USAGE,
        )
    raise FacefuseError(f"{path}: unsupported video output {suffix or '(no extension)'!r}; use {supported}")


# ---------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorTags:
    """The colour description to keep on the output (FFmpeg enum values)."""

    range: int = 0
    space: int = 2
    primaries: int = 2
    trc: int = 2


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    time_base: Fraction
    start: float  # seconds
    duration: float  # seconds, from the packets


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, from its headers and one pass over its packets (no decoding).

    `pts` lists every frame's presentation timestamp in `time_base` units, sorted: frame i of the
    video is the frame shown at pts[i]. Segments and trims are expressed as indexes into it.
    """

    path: Path
    container: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    rate: Fraction
    pts: tuple[int, ...]
    keyframes: tuple[int, ...]  # frame indexes that start a GOP
    last_duration: int  # of the final frame, in time_base units
    rotation: int  # degrees counter-clockwise to show the coded frame upright
    display_matrix: tuple[int, ...] | None
    color: ColorTags
    audio: AudioInfo | None
    size_bytes: int
    broken_packets: int = 0  # packets the demuxer could not read

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def vfr(self) -> bool:
        steps = np.diff(np.asarray(self.pts, dtype=np.int64))
        return steps.size > 1 and float(steps.max() - steps.min()) > VFR_TOLERANCE * float(np.median(steps))

    def time(self, index: int) -> float:
        """Seconds at which frame `index` is shown; `frame_count` gives the end of the last frame."""
        if index >= self.frame_count:
            return float((self.pts[-1] + self.last_duration) * self.time_base)
        return float(self.pts[index] * self.time_base)

    @property
    def duration(self) -> float:
        return self.time(self.frame_count) - self.time(0)

    def index_at(self, seconds: float) -> int:
        """The first frame shown at or after `seconds` from the start of the video."""
        target = self.time(0) + seconds
        stamps = np.asarray(self.pts, dtype=np.float64) * float(self.time_base)
        return int(np.searchsorted(stamps, target - 1e-6, side="left"))

    def summary(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "codec": self.codec,
            "size": [self.width, self.height],
            "fps": round(float(self.rate), 3),
            "frames": self.frame_count,
            "duration_s": round(self.duration, 3),
            "vfr": self.vfr,
            "rotation": self.rotation,
            "audio": self.audio.codec if self.audio else None,
        }


def is_video(path: str | Path) -> bool:
    """True if FFmpeg finds a container with a video stream that is not a still image format."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if container.format.name in STILL_IMAGE_DEMUXERS:
                return False
            return bool(container.streams.video)
    except (av.error.FFmpegError, OSError, ValueError):
        return False


# Demuxers that FFmpeg uses for still images; those targets go down the image path.
STILL_IMAGE_DEMUXERS = frozenset(
    {
        "image2",
        "png_pipe",
        "jpeg_pipe",
        "webp_pipe",
        "bmp_pipe",
        "tiff_pipe",
        "gif",
        "gif_pipe",
        "image2pipe",
    }
)


def open_input(path: Path) -> av.container.InputContainer:
    """Open `path` for demuxing, with facefuse's errors for missing, unreadable or unknown files."""
    if path.is_dir():
        raise InputMissing(f"{path}: is a folder, not a video file")
    if not path.exists():
        raise InputMissing(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise InputMissing(f"{path}: cannot be read (permission denied)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise InputInvalid(f"{path}: not a video facefuse can read ({_ffmpeg_reason(exc)})") from exc
    except OSError as exc:
        raise InputMissing(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def probe(path: str | Path) -> VideoInfo:
    """Read a video's streams and every video packet's timestamp.

    Raises InputMissing, InputInvalid (not a container FFmpeg can read, or no decoder for the video
    codec), NoVideoStream (e.g. an audio-only file) and EmptyVideo (a video stream with no frames).
    """
    path = Path(path)
    with open_input(path) as container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise NoVideoStream(f"{path}: has no video stream ({kinds})")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or not codec.name:
            raise InputInvalid(f"{path}: no decoder for its video codec")
        audio = _audio_info(container)
        pts, keys, last_duration, broken = _scan_packets(container, stream)
        claimed = int(stream.frames or 0)
        if 0 < len(pts) < claimed:
            # The index promises frames whose bytes are gone: the file was cut short.
            raise InputInvalid(
                f"{path}: truncated or damaged: only {len(pts)} of its {claimed} frames can be read"
            )
        matrix = _first_display_matrix(container, stream) if pts else None
        info = VideoInfo(
            path=path,
            container=container.format.name,
            codec=codec.name,
            width=codec.width,
            height=codec.height,
            pix_fmt=codec.pix_fmt or "yuv420p",
            time_base=Fraction(stream.time_base),
            rate=_frame_rate(stream, pts),
            pts=pts,
            keyframes=keys,
            last_duration=last_duration,
            rotation=_rotation_from_matrix(matrix),
            display_matrix=matrix,
            color=ColorTags(
                int(codec.color_range),
                int(codec.colorspace),
                int(codec.color_primaries),
                int(codec.color_trc),
            ),
            audio=audio,
            size_bytes=path.stat().st_size,
            broken_packets=broken,
        )
    if info.frame_count == 0:
        raise EmptyVideo(f"{path}: the video stream has no frames")
    if info.width <= 0 or info.height <= 0:
        raise InputInvalid(f"{path}: the video stream has no picture size ({info.width}x{info.height})")
    return info


def _scan_packets(
    container: av.container.InputContainer, stream: av.VideoStream
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(sorted pts, keyframe indexes, duration of the last frame, unreadable packets) from demuxing."""
    stamps: list[tuple[int, bool, int]] = []
    broken = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            # A damaged file can still hold good frames before (and after) the damage.
            broken += 1
            if broken > 100:
                break
            continue
        if packet.size == 0:
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            broken += 1
            continue
        stamps.append((int(stamp), bool(packet.is_keyframe), int(packet.duration or 0)))
    stamps.sort()
    pts = tuple(dict.fromkeys(s for s, _, _ in stamps))  # duplicate timestamps are one frame
    keys = tuple(i for i, (_, key, _) in enumerate(stamps) if key) or (0,)
    if not stamps:
        return (), (), 0, broken
    steps = np.diff(np.asarray(pts, dtype=np.int64))
    last = stamps[-1][2] or (int(np.median(steps)) if steps.size else 1)
    return pts, keys, last, broken


def _frame_rate(stream: av.VideoStream, pts: Sequence[int]) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    if len(pts) > 1:
        span = (pts[-1] - pts[0]) * Fraction(stream.time_base)
        if span > 0:
            return Fraction(len(pts) - 1) / span
    return Fraction(25)


def _audio_info(container: av.container.InputContainer) -> AudioInfo | None:
    for stream in container.streams.audio:
        codec = stream.codec_context
        if codec is None or not codec.name or not codec.sample_rate:
            continue
        tb = Fraction(stream.time_base)
        start = float((stream.start_time or 0) * tb)
        duration = (
            float((stream.duration or 0) * tb) if stream.duration else float(container.duration or 0) / 1e6
        )
        return AudioInfo(stream.index, codec.name, codec.sample_rate, codec.channels, tb, start, duration)
    return None


def _first_display_matrix(
    container: av.container.InputContainer, stream: av.VideoStream
) -> tuple[int, ...] | None:
    """The stream's display matrix, read from the first decodable frame (FFmpeg attaches it there)."""
    with contextlib.suppress(av.error.FFmpegError):
        container.seek(0, stream=stream)
    try:
        for frame in container.decode(stream):
            for side in frame.side_data:
                if str(getattr(side, "type", "")).endswith("DISPLAYMATRIX"):
                    raw = bytes(side)
                    if len(raw) == DISPLAY_MATRIX_BYTES:
                        return struct.unpack("<9i", raw)
            return None
    except av.error.FFmpegError:
        return None
    return None


def _rotation_from_matrix(matrix: Sequence[int] | None) -> int:
    """Counter-clockwise degrees (0, 90, 180, 270) to show the coded picture upright."""
    if not matrix:
        return 0
    a, b = matrix[0] / 65536.0, matrix[1] / 65536.0
    # FFmpeg's av_display_rotation_get: the clockwise angle of the matrix is atan2(b, a).
    degrees = -np.degrees(np.arctan2(b, a))
    return int(round(degrees / 90.0)) % 4 * 90


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


class FrameReader:
    """Decodes ranges of frames from one open input, seeking only when it has to.

    A worker asks for one segment after another; when the next range starts within the current GOP
    or just ahead, decoding on is cheaper than seeking back to a keyframe.
    """

    def __init__(self, info: VideoInfo, *, threads: int = 0) -> None:
        self.info = info
        self.container = open_input(info.path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = threads
        self._frames: Iterator[av.VideoFrame] | None = None
        self._next_pts: int | None = None  # pts of the next frame the open decoder will yield
        self._pending: av.VideoFrame | None = None

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, first: int, stop: int) -> Iterator[av.VideoFrame]:
        """Frames first..stop-1 (indexes into `info.pts`) in order; broken ones are simply missing."""
        info = self.info
        start_pts = info.pts[first]
        end_pts = info.pts[stop] if stop < info.frame_count else None
        if not self._can_continue(first):
            self._seek(first)
        while True:
            frame = self._pending or self._next_frame()
            self._pending = None
            if frame is None:
                return
            if frame.pts < start_pts:
                continue
            if end_pts is not None and frame.pts >= end_pts:
                self._pending = frame  # the first frame of the following range
                return
            yield frame

    def _can_continue(self, first: int) -> bool:
        if self._frames is None or self._next_pts is None:
            return False
        target = self.info.pts[first]
        if self._pending is not None:
            return self._pending.pts <= target
        # Decoding on is cheaper than a seek as long as no keyframe lies in between.
        key_before = max((k for k in self.info.keyframes if k <= first), default=0)
        return self._next_pts <= target and self._next_pts >= self.info.pts[key_before]

    def _seek(self, first: int) -> None:
        self._pending = None
        key = max((k for k in self.info.keyframes if k <= first), default=0)
        # backward=True lands on the last keyframe at or before the target; a keyframe's decode
        # time is never after its presentation time, so aiming at its pts finds that keyframe.
        self.container.seek(self.info.pts[key] if key else 0, stream=self.stream, backward=True)
        self.stream.codec_context.flush_buffers()
        self._frames = self._decode_all()
        self._next_pts = self.info.pts[key]

    def _decode_all(self) -> Iterator[av.VideoFrame]:
        """Every frame from the current position; undecodable packets are skipped (counted by caller)."""
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError:
                continue  # an unreadable packet: its frame is missing, the rest may be fine
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in decoded:
                if frame.pts is None or frame.is_corrupt:
                    continue
                yield frame

    def _next_frame(self) -> av.VideoFrame | None:
        if self._frames is None:
            self._seek(0)
        frame = next(self._frames, None)
        self._next_pts = None if frame is None else frame.pts
        return frame


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a decoded frame, converted with the frame's own matrix and range."""
    width, height = size or (frame.width, frame.height)
    return frame.to_ndarray(
        width=width,
        height=height,
        format="rgb24",
        src_color_range=frame.color_range,
        dst_color_range=2,  # JPEG / full range
    )


def rgb_to_frame(
    rgb: np.ndarray, color: ColorTags, *, size: tuple[int, int] | None = None, pix_fmt: str = "yuv420p"
) -> av.VideoFrame:
    """A frame in the encoder's pixel format (scaled to `size`), with the input's matrix and range."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    width, height = size or (frame.width, frame.height)
    return frame.reformat(
        width=width,
        height=height,
        format=pix_fmt,
        src_color_range=2,
        dst_colorspace=color.space if color.space not in (0, 2) else None,
        dst_color_range=color.range or 1,
    )


# Luma weights (Kr, Kb) by FFmpeg colour space value, as swscale uses them: BT.709, FCC, BT.601
# (470BG, 170M), SMPTE 240M, BT.2020; unspecified (2) and RGB (0) get swscale's default, BT.601.
_BT601 = (0.299, 0.114)
_LUMA_WEIGHTS = {
    0: _BT601, 1: (0.2126, 0.0722), 2: _BT601, 4: (0.30, 0.11), 5: _BT601, 6: _BT601,
    7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593),
}  # fmt: skip


def patchable_colour(color: ColorTags) -> bool:
    """Whether `patch_yuv420` knows this colour space's matrix (others take FFmpeg's full conversion)."""
    return color.space in _LUMA_WEIGHTS and color.range in (0, 1, 2)


def rgb_to_yuv_matrix(color: ColorTags) -> np.ndarray:
    """(3, 4) affine from full-range RGB to Y, Cb, Cr in the stream's matrix and range (cv2.transform)."""
    kr, kb = _LUMA_WEIGHTS[color.space]
    kg = 1.0 - kr - kb
    full = color.range == 2
    y_gain, c_gain, y_offset = (1.0, 1.0, 0.0) if full else (219 / 255, 224 / 255, 16.0)
    luma = np.array([kr, kg, kb])
    cb = (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb))
    cr = (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))
    return np.array(
        [[*(y_gain * luma), y_offset], [*(c_gain * cb), 128.0], [*(c_gain * cr), 128.0]], np.float32
    )


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) bounding every pixel where two same-shape RGB images differ; None if none."""
    h = before.shape[0]
    diff = (before != after).reshape(h, -1)
    rows = np.flatnonzero(diff.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(diff[y0:y1].any(axis=0))
    return int(cols[0]) // 3, y0, int(cols[-1]) // 3 + 1, y1


def patch_yuv420(
    decoded: av.VideoFrame, rgb: np.ndarray, box: tuple[int, int, int, int], to_yuv: np.ndarray
) -> av.VideoFrame:
    """`decoded` (yuv420p, even size) with the pixels in `box` taken from `rgb` (the same picture,
    full-range RGB) through `to_yuv` (`rgb_to_yuv_matrix` of the stream's colour tags); every other
    pixel stays exactly as decoded.

    The point is speed: swscale's RGB -> YUV of a whole 640x360 frame costs ~1 ms, this ~0.1 ms, and
    the untouched background makes no colour round trip at all.
    """
    h, w = decoded.height, decoded.width
    x0, y0, x1, y1 = box
    x0, y0 = x0 - x0 % 2, y0 - y0 % 2  # whole 2x2 chroma blocks
    x1, y1 = min(w, x1 + x1 % 2), min(h, y1 + y1 % 2)
    planes = decoded.to_ndarray(format="yuv420p")  # (h * 3/2, w): Y, then U and V, each (h/2, w/2) flat
    yuv = cv2.transform(np.ascontiguousarray(rgb[y0:y1, x0:x1]), to_yuv)
    planes[y0:y1, x0:x1] = yuv[..., 0]
    half = cv2.resize(yuv[..., 1:], ((x1 - x0) // 2, (y1 - y0) // 2), interpolation=cv2.INTER_AREA)
    chroma = planes[h:].reshape(2, h // 2, w // 2)
    chroma[0, y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = half[..., 0]
    chroma[1, y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = half[..., 1]
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The picture as it is shown (faces upright for the detector); a view, no copy."""
    return np.rot90(rgb, k=rotation // 90) if rotation else rgb


def coded(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Back from `upright` to the coded orientation, contiguous for the encoder."""
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90))) if rotation else rgb


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSettings:
    """How frames are encoded. Part of the resume key: a change means a different job."""

    encoder: str = "h264"
    crf: int | None = None
    preset: str | None = None
    threads: int = 0  # 0: the codec decides; fixed per job so resumed segments encode identically

    @property
    def codec(self) -> str:
        return ENCODERS[self.encoder][0]

    @property
    def effective_crf(self) -> int:
        return self.crf if self.crf is not None else ENCODERS[self.encoder][1]

    @property
    def effective_preset(self) -> str | None:
        return self.preset if self.preset is not None else ENCODERS[self.encoder][2]

    def codec_options(self) -> dict[str, str]:
        crf, preset = str(self.effective_crf), self.effective_preset
        if self.encoder in ("h264", "h265"):
            options = {"crf": crf}
            if preset:
                options["preset"] = preset
            if self.encoder == "h265":
                options["x265-params"] = "log-level=error"
            return options
        if self.encoder == "vp9":
            # Constant quality needs b:v 0; row-mt lets libvpx use more than one thread per tile row.
            return {"crf": crf, "b": "0", "deadline": preset or "realtime", "cpu-used": "8", "row-mt": "1"}
        return {"crf": crf, "preset": preset or "10"}


@dataclass(frozen=True)
class OutputGeometry:
    """Size and timing of the encoded stream."""

    width: int
    height: int
    time_base: Fraction
    rate: Fraction
    color: ColorTags
    display_matrix: tuple[int, ...] | None
    pix_fmt: str = "yuv420p"


class SegmentEncoder:
    """Encodes frames into one segment file (mp4), started fresh so it decodes on its own."""

    def __init__(self, path: Path, settings: EncoderSettings, geometry: OutputGeometry) -> None:
        self.path = path
        self.geometry = geometry
        try:
            self.container = av.open(str(path), "w", format="mp4")
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputWriteFailed(f"{path}: cannot create ({_ffmpeg_reason(exc)})") from exc
        self.stream = self.container.add_stream(settings.codec, rate=geometry.rate)
        ctx = self.stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = geometry.width, geometry.height, geometry.pix_fmt
        ctx.time_base = geometry.time_base
        self.stream.time_base = geometry.time_base
        ctx.thread_count = settings.threads
        color = geometry.color
        ctx.color_range, ctx.colorspace = color.range, color.space
        ctx.color_primaries, ctx.color_trc = color.primaries, color.trc
        ctx.options = settings.codec_options()
        if geometry.display_matrix:
            self.stream.set_display_matrix(list(geometry.display_matrix))
        if settings.codec == "libsvtav1":
            # SVT-AV1 prints its banner to stderr unless told otherwise; facefuse's stderr is for errors.
            os.environ.setdefault("SVT_LOG", "1")
        self.frames = 0
        self.first_pts: int | None = None

    def encode(self, frame: av.VideoFrame, pts: int) -> None:
        self.first_pts = pts if self.first_pts is None else self.first_pts
        frame.pts = pts
        frame.time_base = self.geometry.time_base
        frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose, never force an I
        self._mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        self._mux(self.stream.encode(None))
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()

    def _mux(self, packets: Iterable[av.Packet]) -> None:
        for packet in packets:
            self.container.mux(packet)


# ---------------------------------------------------------------------------------------------
# The final mux: segments + audio -> one labelled file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioPlan:
    """Which span of the input's audio goes into the output, and where it lands in time."""

    info: AudioInfo
    start: float  # seconds in the input's timeline
    end: float | None
    shift: float  # seconds subtracted from every timestamp (the trim start)


@dataclass
class MuxStats:
    audio: str = "none"  # "copied", "re-encoded (aac)" or "none"
    audio_duration: float = 0.0
    video_packets: int = 0


@dataclass
class _Timed:
    seconds: float
    order: int
    packet: av.Packet = field(compare=False)
    stream: Any = field(compare=False)

    def __lt__(self, other: _Timed) -> bool:
        return (self.seconds, self.order) < (other.seconds, other.order)


def mux_output(
    parts: Sequence[tuple[Path, int]],
    audio: AudioPlan | None,
    input_path: Path,
    dest: Path,
    container: VideoContainer,
    display_matrix: Sequence[int] | None = None,
) -> MuxStats:
    """Concatenate the segment files (no re-encode) and the audio into `dest`, with the label tags.

    `parts` pairs each segment file with the pts its first frame was encoded at (see `_video_packets`).
    """
    stats = MuxStats()
    try:
        out = av.open(str(dest), "w", format=container.muxer, options={"movflags": "+faststart"})
    except (av.error.FFmpegError, OSError) as exc:
        raise OutputWriteFailed(f"{dest}: cannot create ({_ffmpeg_reason(exc)})") from exc
    with contextlib.ExitStack() as stack:
        stack.callback(out.close)
        label = labels.label_text()
        out.metadata.update({"comment": label, "description": label, "encoder": labels.software_text()})
        first = stack.enter_context(av.open(str(parts[0][0])))
        vout = _copy_stream(out, first.streams.video[0])
        if display_matrix:
            vout.set_display_matrix(list(display_matrix))
        streams: list[Iterator[_Timed]] = [_video_packets(parts, vout, stats)]
        audio_in = stack.enter_context(av.open(str(input_path), metadata_errors="ignore")) if audio else None
        if audio is not None and audio_in is not None:
            streams.append(_audio_packets(audio_in, out, audio, container, stats))
        for item in heapq.merge(*streams):
            item.packet.stream = item.stream
            out.mux(item.packet)
    return stats


def _copy_stream(out: av.container.OutputContainer, template: Any) -> Any:
    """An output stream with `template`'s codec parameters, for packets copied as they are."""
    try:
        return out.add_stream_from_template(template)
    except av.codec.codec.UnknownCodecError:
        # The template's decoder has no encoder of that name (libdav1d for AV1): copy the
        # parameters without looking a codec up.
        return out.add_stream_from_template(template, opaque=True)


def _video_packets(parts: Sequence[tuple[Path, int]], vout: Any, stats: MuxStats) -> Iterator[_Timed]:
    """Every part's packets, with the exact timestamps they were encoded at.

    The mp4 muxer stores a part's start as an edit list in 1/1000 s, so reading a part back can
    shift all its timestamps by a few ticks; each part starts with an IDR frame, shown first, so
    one offset per part puts its first frame back at the pts it was encoded with.
    """
    last_dts: int | None = None
    for path, first_pts in parts:
        with av.open(str(path)) as part:
            stream = part.streams.video[0]
            shift: int | None = None
            for packet in part.demux(stream):
                if packet.size == 0 or packet.dts is None or packet.pts is None:
                    continue
                shift = first_pts - packet.pts if shift is None else shift
                packet.pts += shift
                packet.dts += shift
                packet.time_base = stream.time_base
                # Decode order must stay strictly increasing across parts.
                if last_dts is not None and packet.dts <= last_dts:
                    packet.dts = min(last_dts + 1, packet.pts)
                last_dts = packet.dts
                stats.video_packets += 1
                yield _Timed(float(packet.dts * stream.time_base), 0, packet, vout)


def _audio_packets(
    source: av.container.InputContainer,
    out: av.container.OutputContainer,
    plan: AudioPlan,
    container: VideoContainer,
    stats: MuxStats,
) -> Iterator[_Timed]:
    stream = source.streams[plan.info.index]
    if plan.info.codec in container.audio_copy:
        stats.audio = "copied"
        yield from _copied_audio(source, stream, _copy_stream(out, stream), plan, stats)
    else:
        stats.audio = "re-encoded (aac)"
        aout = out.add_stream("aac", rate=plan.info.sample_rate)
        aout.layout = stream.codec_context.layout
        yield from _transcoded_audio(source, stream, aout, plan, stats)


def _copied_audio(
    source: av.container.InputContainer, stream: Any, aout: Any, plan: AudioPlan, stats: MuxStats
) -> Iterator[_Timed]:
    tb = stream.time_base
    shift = round(plan.shift / tb)
    first: float | None = None
    last_end = 0.0
    for packet in source.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        start = float(packet.pts * tb)
        if start < plan.start - 1e-6 or (plan.end is not None and start >= plan.end - 1e-6):
            continue
        packet.pts -= shift
        packet.dts = (packet.dts if packet.dts is not None else packet.pts + shift) - shift
        first = start if first is None else first
        last_end = start + float((packet.duration or 0) * tb)
        yield _Timed(float(packet.dts * tb), 1, packet, aout)
    stats.audio_duration = max(0.0, last_end - (first or 0.0))


def _transcoded_audio(
    source: av.container.InputContainer, stream: Any, aout: Any, plan: AudioPlan, stats: MuxStats
) -> Iterator[_Timed]:
    samples = 0
    resampler = av.AudioResampler(format="fltp", layout=aout.layout, rate=plan.info.sample_rate)
    origin: int | None = None  # output pts of the first kept sample

    def encode(chunks: Iterable[av.AudioFrame]) -> Iterator[_Timed]:
        nonlocal samples
        for chunk in chunks:
            chunk.pts = (origin or 0) + samples
            samples += chunk.samples
            for packet in aout.encode(chunk):
                yield _Timed(float(packet.pts * packet.time_base), 1, packet, aout)

    for frame in _decode_audio(source, stream):
        start = float(frame.time) if frame.time is not None else None
        if start is None or start < plan.start - 1e-6 or (plan.end is not None and start >= plan.end):
            continue
        if origin is None:
            origin = round(max(start - plan.shift, 0.0) * plan.info.sample_rate)
        yield from encode(resampler.resample(frame))
    yield from encode(resampler.resample(None))
    for packet in aout.encode(None):
        yield _Timed(float(packet.pts * packet.time_base), 1, packet, aout)
    stats.audio_duration = samples / plan.info.sample_rate


def _decode_audio(source: av.container.InputContainer, stream: Any) -> Iterator[av.AudioFrame]:
    for packet in source.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue  # a damaged audio packet is a short gap, not a failed job


def sign_video(src: Path, dest: Path, *, container: VideoContainer, title: str, source_type: str) -> None:
    """Copy `src` to `dest` with a signed C2PA manifest embedded (mp4/mov)."""
    identity = labels.SigningIdentity.load_or_create()
    try:
        with identity.signer() as signer, src.open("rb") as fin, dest.open("w+b") as fout:
            labels.sign_into(
                fin, fout, mime_type=container.mime_type, title=title, source_type=source_type, signer=signer
            )
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise OutputWriteFailed(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    except Exception as exc:  # c2pa.C2paError and friends
        raise OutputWriteFailed(f"{title}: cannot embed the signed C2PA manifest ({exc})") from exc


def read_video_label(path: Path) -> tuple[str | None, bool]:
    """(the AI-generated label from the container tags, whether FFmpeg recognised a video at all)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video or container.format.name in STILL_IMAGE_DEMUXERS:
                return None, False
            tags = dict(container.metadata)
    except (av.error.FFmpegError, OSError, ValueError):
        return None, False
    for key in ("comment", "description", "Comment", "Description"):
        value = tags.get(key)
        if value and value.strip().lower().startswith("ai-generated"):
            return value, True
    return None, True


def check_video_output_path(output: str | Path, inputs: Iterable[str | Path]) -> Path:
    """Validate a video output path before any work: labellable container, folder exists, not an input."""
    from facefuse.errors import OutputIsInput
    from facefuse.media.image import _require_parent_dir, _same_file

    out = Path(output)
    video_container(out)
    _require_parent_dir(out)
    for candidate in inputs:
        if _same_file(out, Path(candidate)):
            raise OutputIsInput(f"{out}: the output would overwrite the input {candidate}")
    return out
