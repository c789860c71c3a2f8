"""Checking uploads before anything is stored: type from the bytes, size and pixels from headers.

The client's file name and Content-Type are never trusted or used: the type comes from the file's
first bytes, the stored name from the server (`jobs/<id>/in/target.<sniffed ext>`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from facefuse.errors import FacefuseError, InputInvalid

IMAGE_TYPES = ("jpg", "png", "webp", "bmp", "tif")
VIDEO_TYPES = ("mp4", "mov", "mkv", "avi")
SNIFF_BYTES = 64


class UnsupportedMedia(FacefuseError):
    """Not a file type the service takes (HTTP 415)."""


def sniff(head: bytes) -> str | None:
    """The file type from its first bytes (magic numbers), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM (EBML)
        return "mkv"
    return None


@dataclass
class CheckedImage:
    kind: str  # a key of IMAGE_TYPES
    data: bytes
    rgb: np.ndarray | None  # None when checked without decoding (decode=False)


def check_image(fh: BinaryIO, role: str, max_pixels: int, *, decode: bool = True) -> CheckedImage:
    """Read and check an uploaded image; with `decode` also decode it (strictly, as the CLI does).

    `decode=False` is for uploads a job worker decodes later: the header, the pixel limit and the
    completeness of the compressed data are checked, not every pixel (media.image.check_image_data).
    Raises UnsupportedMedia (not an image type we take), TooManyPixels (from the header, before
    any pixel is decoded) or InputInvalid (truncated, corrupt).
    """
    from facefuse.media.image import check_image_data, read_image_data

    data = fh.read()
    kind = sniff(data[:SNIFF_BYTES])
    if kind not in IMAGE_TYPES:
        what = f"a {kind} video" if kind else "not an image"
        raise UnsupportedMedia(f"{role}: {what}; send a JPEG, PNG, WebP, BMP or TIFF image")
    if not decode:
        check_image_data(data, name=role, max_pixels=max_pixels)
        return CheckedImage(kind, data, None)
    return CheckedImage(kind, data, read_image_data(data, name=role, max_pixels=max_pixels))


class Staging:
    """A private temp folder in the data dir for files being checked; removed on exit, whatever happens.

    It sits on the same file system as DirectoryStorage, so accepting a staged file is a rename.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="upload-", dir=root))

    def save(self, fh: BinaryIO, name: str) -> Path:
        dest = self.path / name
        with open(dest, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        return dest

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sniff_file(fh: BinaryIO) -> str | None:
    head = fh.read(SNIFF_BYTES)
    fh.seek(0)
    return sniff(head)


def check_video(path: Path, max_pixels: int, max_frames: int) -> object:
    """Probe a staged video: a readable container with frames (the scan finds truncation)."""
    from facefuse.errors import TooManyPixels
    from facefuse.media import video as media

    info = media.probe(path)
    if info.width * info.height > max_pixels:
        raise TooManyPixels(
            f"target: {info.width}x{info.height} frames are more pixels than the limit of {max_pixels:,}"
        )
    if info.frame_count > max_frames:
        raise InputInvalid(f"target: {info.frame_count} frames; this server takes at most {max_frames:,}")
    return info


def output_problem(info: Any, options: Any, max_pixels: int, max_frames: int) -> str | None:
    """Why the video these job options make is over the limits, or None. `resolution` and `fps`
    change the frames encoded, so the input passing the limits is not enough."""
    from facefuse.video import make_timeline, output_geometry

    settings = options.video_settings()
    timeline = make_timeline(info, settings)
    geometry = output_geometry(info, settings, timeline)
    if max_pixels and geometry.width * geometry.height > max_pixels:
        return (
            f"resolution {options.resolution}: {geometry.width}x{geometry.height} output frames are "
            f"more pixels than the limit of {max_pixels:,}"
        )
    frames = timeline.output_frames
    if max_frames and frames > max_frames:
        return (
            f"fps {options.fps}: the output would have {frames:,} frames; "
            f"this server makes at most {max_frames:,}"
        )
    return None
