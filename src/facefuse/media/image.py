"""Still images in and out: strict decoding of untrusted files, labelled and signed atomic writes.

Reading turns anything Pillow can decode among JPEG, PNG, WebP, BMP and TIFF into an upright RGB uint8
array, and turns every way a file can be wrong into one of facefuse's documented errors. Writing
always labels the output (metadata + signed C2PA manifest) and never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import c2pa
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facefuse.errors import (
    ExitCode,
    FacefuseError,
    InputInvalid,
    InputMissing,
    OutputDirMissing,
    OutputIsInput,
    OutputWriteFailed,
    TooManyPixels,
)
from facefuse.media import labels

try:
    # Optional. Pillow discards libjpeg's warnings, so a JPEG cut short and closed with an EOI marker
    # decodes "successfully" with a grey bottom; simplejpeg's strict mode reports it. Without it
    # such files are accepted (files simply cut off are still rejected by Pillow).
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

DEFAULT_MAX_PIXELS = 100_000_000
# Pillow plugins we let near untrusted input. Phone JPEGs that Pillow reports as "MPO" still come in
# through the JPEG plugin, which hands them to its MPO subclass.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
WHITE = (255, 255, 255, 255)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
ADAM7_PASSES = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputFormat:
    """How an output extension is encoded and which MIME type the C2PA signer is told."""

    pil_format: str
    mime_type: str


OUTPUT_FORMATS = {
    ".jpg": OutputFormat("JPEG", "image/jpeg"),
    ".jpeg": OutputFormat("JPEG", "image/jpeg"),
    ".png": OutputFormat("PNG", "image/png"),
    ".webp": OutputFormat("WEBP", "image/webp"),
}
# Readable but not writable: these containers cannot carry XMP or a C2PA manifest in a way facefuse
# can sign, and every output must say it is AI-generated.
UNLABELLABLE_OUTPUTS = frozenset({".bmp", ".dib"})

# Pillow keeps its decompression-bomb limit and its truncated-file switch in module globals. We flip
# them only for the duration of a decode, under this lock, so concurrent readers cannot restore each
# other's values out of order.
_PILLOW_GLOBALS_LOCK = threading.RLock()


@contextlib.contextmanager
def pillow_guard() -> Iterator[None]:
    """Make Pillow strict for one decode: our pixel limit is the only one, and truncation is an error.

    Image.MAX_IMAGE_PIXELS is lifted (None) because `read_image` checks `max_pixels` itself from the
    header; otherwise Pillow would warn above ~89 MP and refuse above ~179 MP whatever the caller
    asked for. ImageFile.LOAD_TRUNCATED_IMAGES is forced False in case other code in the process set
    it: with it True Pillow silently pads truncated files with grey.

    It also registers all of Pillow's plugins: `Image.open(..., formats=...)` raises KeyError for a
    listed format whose plugin is not loaded yet (WEBP, TIFF until something calls Image.init()).
    """
    Image.init()
    with _PILLOW_GLOBALS_LOCK:
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` into a writable, C-contiguous RGB uint8 array of shape (H, W, 3), upright.

    EXIF orientation is applied. Grayscale, palette and CMYK become RGB; 16-bit samples keep their
    high byte; transparency is composited over white. Multi-frame files yield their first frame.

    Beyond Pillow's own checks, a PNG whose image data is shorter than its header promises is
    rejected, and so is a JPEG cut short but closed with an end marker when the optional
    `simplejpeg` package is installed (Pillow cannot see that case). Decodes are serialised by a
    lock because Pillow's strictness settings are process-wide (see `pillow_guard`).

    Raises:
        InputMissing: no such file, a folder, or not readable (permissions).
        TooManyPixels: width*height > max_pixels, found from the header before any pixel is decoded.
        InputInvalid: not a JPEG/PNG/WebP/BMP/TIFF, or truncated or corrupt.
    """
    path = Path(path)
    with _open_input(path) as fh:
        return _read(fh, path, max_pixels)


def read_image_data(data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`read_image` for bytes in memory (an upload); `name` is what error messages call it."""
    return _read(io.BytesIO(data), Path(name), max_pixels)


def check_image_data(
    data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[str, tuple[int, int]]:
    """A check of an image in memory that costs next to nothing for JPEG and PNG (no pixel decoded).

    For the service's uploads, which a worker decodes strictly (`read_image_data`) later anyway: the
    header is parsed and the pixel limit applied as in `read_image_data`, and the file's structure
    walked: a JPEG's segments up to its scan and the end marker after it, a PNG's chunks with their
    CRCs up to IEND. That finds truncated and cut-up files. Damage inside the compressed data that
    keeps the structure (rare, and deliberate) is left to the full decode. Other formats are decoded
    fully. Returns Pillow's format name and the (width, height). Raises TooManyPixels or InputInvalid.
    """
    fh, path = io.BytesIO(data), Path(name)
    with pillow_guard():
        im = _identify(fh, path)
        _check_pixel_count(im.size, max_pixels, path)
        pil_format, size = im.format or "", im.size
        if pil_format not in ("JPEG", "MPO", "PNG"):
            _decode(im, path)
    problem = _png_structure(data) if pil_format == "PNG" else None
    if pil_format in ("JPEG", "MPO"):
        problem = _jpeg_structure(data)
    if problem:
        raise InputInvalid(f"{path}: truncated or corrupt image data ({problem})")
    return pil_format, size


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_structure(data: bytes) -> str | None:
    """What is wrong with a JPEG's marker structure, or None: segments up to SOS, then EOI.

    In entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an FF D9 after the
    first scan is the end marker (or inside a later scan's header, which only a crafted file has).
    """
    pos, end, frame = 2, len(data), False
    while True:
        if pos >= end or data[pos] != 0xFF:
            return "no marker where one must be"
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            return "ends inside a marker"
        marker = data[pos]
        pos += 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if marker == 0xD9:
            return "ends before the image data"
        if pos + 2 > end:
            return "ends inside a segment"
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return "a segment runs past the end"
        frame = frame or marker in _JPEG_SOF
        pos += length
        if marker == 0xDA:
            break
    if not frame:
        return "no frame header"
    if data.rfind(b"\xff\xd9", pos) < 0:
        return "no end marker: cut short"
    return None


def _png_structure(data: bytes) -> str | None:
    """What is wrong with a PNG's chunks, or None: each complete with a good CRC, IDAT, then IEND."""
    if not data.startswith(PNG_SIGNATURE):
        return "no PNG signature"
    pos, end, idat = len(PNG_SIGNATURE), len(data), False
    while pos + 12 <= end:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if pos + 12 + length > end:
            return f"chunk {kind!r} runs past the end"
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            return f"chunk {kind!r} fails its CRC"
        idat = idat or kind == b"IDAT"
        if kind == b"IEND":
            return None if idat else "no image data"
        pos += 12 + length
    return "no IEND chunk: cut short"


def _read(fh: BinaryIO, path: Path, max_pixels: int) -> np.ndarray:
    with pillow_guard():
        im = _identify(fh, path)
        _check_pixel_count(im.size, max_pixels, path)
        pil_format = im.format
        im = _decode(im, path)
        _verify_complete(pil_format, fh, path)
    return _to_rgb_array(im)


def _open_input(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise InputMissing(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputMissing(f"{path}: is a folder, not an image file") from exc
    except PermissionError as exc:
        raise InputMissing(f"{path}: cannot be read (permission denied)") from exc
    except OSError as exc:
        raise InputMissing(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _identify(fh: BinaryIO, path: Path) -> Image.Image:
    """Open lazily: Pillow reads only the header here, so size checks cost nothing."""
    try:
        return Image.open(fh, formats=INPUT_FORMATS)
    except UnidentifiedImageError as exc:
        raise InputInvalid(f"{path}: not a supported image (JPEG, PNG, WebP, BMP or TIFF)") from exc
    except Image.DecompressionBombError as exc:  # cannot happen under pillow_guard; kept as a backstop
        raise TooManyPixels(f"{path}: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types for malformed headers
        raise InputInvalid(f"{path}: corrupt image header ({exc})") from exc


def _check_pixel_count(size: tuple[int, int], max_pixels: int, path: Path) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputInvalid(f"{path}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"{path}: {width}x{height} = {width * height:,} pixels is more than the limit of "
            f"{max_pixels:,} (raise --max-pixels if the file is trusted)"
        )


def _decode(im: Image.Image, path: Path) -> Image.Image:
    """Decode every pixel now, so truncation and corruption surface here and not downstream."""
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ...
        raise InputInvalid(f"{path}: truncated or corrupt image data ({exc})") from exc
    with contextlib.suppress(Exception):  # malformed EXIF is common; the pixels are still good
        im = ImageOps.exif_transpose(im)
    return im


def _verify_complete(pil_format: str | None, fh: BinaryIO, path: Path) -> None:
    """Catch the damaged files Pillow decodes without complaint (it pads them with grey or black)."""
    if pil_format not in ("JPEG", "MPO", "PNG"):
        return
    fh.seek(0)
    data = fh.read()
    if pil_format == "PNG":
        _verify_png_data(data, path)
    elif simplejpeg is not None:
        _verify_jpeg_data(data, path)


def _verify_jpeg_data(data: bytes, path: Path) -> None:
    """Walk the whole entropy-coded JPEG data with libjpeg-turbo in strict mode.

    Only "premature end" is fatal: other libjpeg warnings (e.g. extraneous bytes before a marker)
    are common in camera files that display fine. Grey output at 1/8 scale keeps this cheap.
    """
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=True, min_factor=8, strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise InputInvalid(f"{path}: truncated or corrupt image data ({exc})") from exc


def _verify_png_data(data: bytes, path: Path) -> None:
    """Check the IDAT stream inflates to as many bytes as IHDR promises.

    Pillow stops quietly when the zlib stream ends early and leaves the missing rows black.
    """
    if not data.startswith(PNG_SIGNATURE):
        return
    inflater, inflated, expected, pos = zlib.decompressobj(), 0, None, len(PNG_SIGNATURE)
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            body = data[pos + 8 : pos + 8 + length]
            if kind == b"IHDR":
                expected = _png_expected_bytes(*struct.unpack(">IIBBBBB", body[:13]))
            elif kind == b"IDAT":
                inflated += _inflated_size(inflater, body)
            elif kind == b"IEND":
                break
            pos += 12 + length
    except (struct.error, zlib.error, KeyError) as exc:
        raise InputInvalid(f"{path}: corrupt PNG data ({exc})") from exc
    if expected is not None and inflated < expected:
        raise InputInvalid(
            f"{path}: truncated or corrupt image data (PNG holds {inflated:,} of {expected:,} bytes)"
        )


def _png_expected_bytes(width: int, height: int, depth: int, colour: int, _c: int, _f: int, lace: int) -> int:
    bits = depth * PNG_CHANNELS[colour]

    def size(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * (1 + (w * bits + 7) // 8)  # +1: filter byte per row

    if not lace:
        return size(width, height)
    return sum(
        size((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in ADAM7_PASSES
    )


def _inflated_size(inflater: zlib._Decompress, chunk: bytes) -> int:
    """Bytes `chunk` inflates to, without holding more than INFLATE_CHUNK of output at once."""
    total = 0
    while not inflater.eof:
        out = inflater.decompress(chunk, INFLATE_CHUNK)
        total += len(out)
        chunk = inflater.unconsumed_tail
        # A full buffer may leave output pending inside zlib even with no input left: go round again.
        if not chunk and len(out) < INFLATE_CHUNK:
            break
    return total


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in SIXTEEN_BIT_MODES:
        # Pillow's own convert() clips 16-bit values at 255 (almost all white); keep the high byte.
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8
        gray = wide.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if "A" in im.getbands() or "a" in im.getbands():
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.array(im, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def output_format(path: str | Path) -> OutputFormat:
    """The encoding for an output path's extension; FacefuseError(USAGE) if it cannot be labelled."""
    suffix = Path(path).suffix.lower()
    if suffix in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[suffix]
    supported = ", ".join(sorted(OUTPUT_FORMATS))
    if suffix in UNLABELLABLE_OUTPUTS:
        message = (
            f"{path}: cannot write {suffix} output: the format cannot carry the AI-generated label "
            f"or a C2PA manifest, and every output must be labelled; use one of {supported}"
        )
    else:
        message = f"{path}: unsupported output type {suffix or '(no extension)'!r}; use one of {supported}"
    raise FacefuseError(message, ExitCode.USAGE)


def write_image(
    rgb: np.ndarray,
    path: str | Path,
    *,
    source_type: str,
    jpeg_quality: int = 95,
    signer: c2pa.Signer | None = None,
) -> None:
    """Write `rgb` (H, W, 3 uint8) to `path`, labelled as AI-generated and signed, atomically.

    The format follows the extension: .jpg/.jpeg, .png or .webp (`jpeg_quality` also sets WebP's
    lossy quality). BMP output is refused (FacefuseError with ExitCode.USAGE): BMP has nowhere to
    put XMP or a C2PA manifest, and an unlabelled output is not allowed. BMP is fine as input.

    `source_type` is the short IPTC digital-source-type name recorded in XMP and in the manifest's
    `c2pa.created` action, e.g. "compositeWithTrainedAlgorithmicMedia". `signer` is a c2pa.Signer
    (see `SigningIdentity.signer()`); when None the identity in `labels.config_dir()` is loaded
    (created on first use) for this one call.

    The file is written to a temporary name in the same folder and renamed over `path` only once
    complete, so an existing file at `path` is either replaced whole or left untouched; the temporary
    file is removed on any failure, Ctrl-C included.

    Raises:
        FacefuseError(USAGE): unsupported or unlabellable extension.
        OutputDirMissing: the folder does not exist.
        OutputWriteFailed: encoding, signing or writing failed (disk full, permissions, ...).
    """
    path = Path(path)
    fmt = output_format(path)
    _check_rgb(rgb)
    labels.source_type_uri(source_type)  # fail on a bad name before any work
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
    _require_parent_dir(path)
    encoded = _encode(rgb, fmt, path, source_type=source_type, quality=jpeg_quality)
    with _signer_for_call(signer) as active_signer:

        def write(out: BinaryIO) -> None:
            labels.sign_into(
                encoded,
                out,
                mime_type=fmt.mime_type,
                title=path.name,
                source_type=source_type,
                signer=active_signer,
            )

        _write_atomically(path, write)


def _check_rgb(rgb: np.ndarray) -> None:
    # A wrong array is a bug in the caller, not a user error, hence TypeError/ValueError.
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy array, got {type(rgb).__name__} {getattr(rgb, 'dtype', '')}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")


def _require_parent_dir(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise OutputDirMissing(f"{path}: the output folder {parent} does not exist")


def _encode(rgb: np.ndarray, fmt: OutputFormat, path: Path, *, source_type: str, quality: int) -> io.BytesIO:
    """Encode in memory with the metadata label; the C2PA step then copies it into the real file."""
    options = labels.pillow_save_options(fmt.pil_format, source_type)
    if fmt.pil_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format=fmt.pil_format, **options)
    except (OSError, ValueError) as exc:  # e.g. WebP refuses sides over 16383 pixels
        raise OutputWriteFailed(f"{path}: cannot encode as {fmt.pil_format} ({exc})") from exc
    buffer.seek(0)
    return buffer


@contextlib.contextmanager
def _signer_for_call(signer: c2pa.Signer | None) -> Iterator[c2pa.Signer]:
    """Yield the caller's signer, or one from the default identity that is closed afterwards."""
    if signer is not None:
        yield signer
        return
    identity = labels.SigningIdentity.load_or_create()
    with identity.signer() as owned:
        yield owned


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run `write` on a temp file next to `path`, fsync, then rename it over `path`.

    Any failure (BaseException: Ctrl-C too) removes the temp file and leaves `path` as it was.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise OutputWriteFailed(
            f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc})"
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates 0600; give the output the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, c2pa.C2paError):
            raise OutputWriteFailed(f"{path}: cannot embed the signed C2PA manifest ({exc})") from exc
        if isinstance(exc, OSError):
            raise OutputWriteFailed(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Fallback: os.umask can only be read by setting it; restore immediately.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# Output path checks
# ---------------------------------------------------------------------------------------------


def check_output_path(output: str | Path, inputs: Iterable[str | Path]) -> Path:
    """Validate an output path before any expensive work; returns it as a Path.

    Raises FacefuseError(USAGE) for an extension that cannot be labelled (see `write_image`),
    OutputDirMissing if its folder does not exist, and OutputIsInput if it is the same file as any
    input (hard links and symlinks included when both exist; resolved paths otherwise).
    """
    out = Path(output)
    output_format(out)
    _require_parent_dir(out)
    for candidate in inputs:
        if _same_file(out, Path(candidate)):
            raise OutputIsInput(f"{out}: the output would overwrite the input {candidate}")
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
