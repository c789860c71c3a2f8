"""Tests for facefuse.media: strict image reading, labelled + signed atomic writes, inspection."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import threading
import zlib
from pathlib import Path

import c2pa
import numpy as np
import pytest
from cryptography import x509
from PIL import Image, ImageFile

import facefuse
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
from facefuse.media import (
    SigningIdentity,
    check_output_path,
    config_dir,
    inspect_file,
    label_text,
    read_image,
    source_type_uri,
    write_image,
)
from facefuse.media import image as image_module
from facefuse.media import labels as labels_module

SOURCE_TYPE = "compositeWithTrainedAlgorithmicMedia"
SOURCE_URI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every signing identity inside the test's tmp folder, never in the real home."""
    folder = tmp_path / "config"
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def signer() -> c2pa.Signer:
    with SigningIdentity.load_or_create().signer() as s:
        yield s


def photo_like(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth gradient with mild noise: compresses like a photo, so JPEG PSNR is meaningful."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=2)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header_only(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose IHDR claims width x height but whose (complete) zlib stream holds only `rows` rows.

    Decoding it must fail, so a TooManyPixels error proves the check ran on the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = zlib.compress((b"\x00" + b"\x80" * width) * rows)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def flip_byte_in_image_data(path: Path) -> None:
    """Change one byte of compressed pixel data (not of the manifest) in a PNG, JPEG or WebP file."""
    data = bytearray(path.read_bytes())
    if data.startswith(b"\x89PNG"):
        pos = data.find(b"IDAT") + 4 + 20
    elif data.startswith(b"RIFF"):
        pos = data.find(b"VP8") + 8 + 40
    else:  # JPEG: entropy-coded data sits just before the final EOI marker
        pos = len(data) - 40
        while data[pos] in (0x00, 0xFF) or data[pos - 1] == 0xFF:
            pos -= 1
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------------
# read_image
# ---------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40 as stored in the file
    stored[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    rgb = read_image(path)

    assert rgb.shape == (40, 20, 3)
    assert rgb[2, -3, 0] > 200 and rgb[2, -3, 1] < 60  # the red corner is now top-right
    assert rgb[-3, 2, 0] < 60


def test_read_returns_contiguous_writable_rgb_uint8(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    pixels = photo_like()
    Image.fromarray(pixels).save(path)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == pixels.shape
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    np.testing.assert_array_equal(rgb, pixels)


def test_text_file_named_jpg_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(InputInvalid, match=r"notes\.jpg"):
        read_image(path)


@pytest.mark.parametrize("pillow_lenient", [False, True])
def test_truncated_jpeg_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pillow_lenient: bool
) -> None:
    # Also when other code in the process told Pillow to accept truncated files.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pillow_lenient)
    buffer = io.BytesIO()
    Image.fromarray(photo_like(240, 320)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(InputInvalid, match="truncated or corrupt"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pillow_lenient  # restored


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_truncated_formats_are_rejected(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo_like()).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    with pytest.raises(InputInvalid):
        read_image(path)


def test_missing_file_and_folder_are_input_missing(tmp_path: Path) -> None:
    with pytest.raises(InputMissing, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputMissing, match="folder"):
        read_image(tmp_path)
    assert InputMissing("x").exit_code == ExitCode.INPUT_MISSING


def test_permission_error_maps_to_input_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too (where chmod 000 does not stop reads): simulate the OS refusing the open.
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InputMissing, match="permission denied"):
        read_image(path)


def test_too_many_pixels_is_caught_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_with_header_only(20_000, 20_000))
    assert path.stat().st_size < 100_000
    with pytest.raises(TooManyPixels, match="400,000,000"):
        read_image(path, max_pixels=1_000_000)
    # Default limit (100 MP) applies too, and above Pillow's own bomb limit we still speak our error.
    with pytest.raises(TooManyPixels):
        read_image(path)


def test_a_real_image_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(path)
    with pytest.raises(TooManyPixels):
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=2_000_000).shape == (1000, 2000, 3)


def test_our_limit_replaces_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's own bomb limit set tiny, an image under the caller's limit still reads: ours is
    # the only limit. (Pillow would raise DecompressionBombError above twice its limit.)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "ok.png"
    Image.new("RGB", (100, 50), (1, 2, 3)).save(path)
    assert read_image(path, max_pixels=10_000).shape == (50, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    with pytest.raises(TooManyPixels):
        read_image(path, max_pixels=4_999)


def test_png_with_too_little_image_data_is_rejected(tmp_path: Path) -> None:
    # A complete zlib stream that holds 3 of 40 rows: Pillow fills the rest with black silently.
    path = tmp_path / "short.png"
    path.write_bytes(png_with_header_only(50, 40, rows=3))
    with pytest.raises(InputInvalid, match="truncated or corrupt"):
        read_image(path)
    path.write_bytes(png_with_header_only(50, 40, rows=40))
    assert read_image(path).shape == (40, 50, 3)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_then_closed_with_eoi_is_rejected(tmp_path: Path, progressive: bool) -> None:
    # Pillow decodes this without error (grey bottom): libjpeg only warns "premature end of data
    # segment" and Pillow discards libjpeg warnings. Detecting it needs the optional simplejpeg.
    pytest.importorskip("simplejpeg", reason="optional simplejpeg needed to see libjpeg warnings")
    buffer = io.BytesIO()
    Image.fromarray(photo_like(240, 320)).save(buffer, format="JPEG", quality=90, progressive=progressive)
    data = buffer.getvalue()
    path = tmp_path / "cut-eoi.jpg"
    path.write_bytes(data[: len(data) * 3 // 4] + b"\xff\xd9")
    with pytest.raises(InputInvalid, match="premature end"):
        read_image(path)


@pytest.mark.parametrize(
    ("make", "expected_pixel"),
    [
        (lambda: Image.new("L", (6, 5), 77), (77, 77, 77)),
        (lambda: Image.new("1", (6, 5), 1), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((5, 6), 40000, np.uint16)), (156, 156, 156)),  # 40000 >> 8
        (lambda: Image.new("RGBA", (6, 5), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("RGBA", (6, 5), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white
        (lambda: Image.new("LA", (6, 5), (50, 255)), (50, 50, 50)),
        (lambda: Image.new("RGB", (6, 5), (1, 2, 3)).quantize(4), (1, 2, 3)),
    ],
    ids=["gray", "bilevel", "gray16", "rgba-opaque", "rgba-transparent", "gray-alpha", "palette"],
)
def test_modes_come_back_rgb_uint8(tmp_path: Path, make, expected_pixel) -> None:
    path = tmp_path / "mode.png"
    make().save(path)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 6, 3) and rgb.flags.c_contiguous
    assert tuple(int(v) for v in rgb[2, 3]) == expected_pixel


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    bgr16 = np.zeros((4, 5, 3), np.uint16)
    bgr16[..., 2] = 65535  # red channel, full scale
    bgr16[..., 1] = 1000
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), bgr16)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and tuple(int(v) for v in rgb[0, 0]) == (255, 3, 0)


@pytest.mark.parametrize("ext", ["bmp", "webp", "tif"])
def test_other_input_formats(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"in.{ext}"
    pixels = photo_like(32, 48)
    Image.fromarray(pixels).save(path, **({"lossless": True} if ext == "webp" else {}))
    np.testing.assert_array_equal(read_image(path), pixels)


# ---------------------------------------------------------------------------------------------
# write_image + inspect_file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_write_then_inspect_round_trip(tmp_path: Path, signer: c2pa.Signer, ext: str) -> None:
    pixels = photo_like()
    path = tmp_path / f"swapped.{ext}"
    write_image(pixels, path, source_type=SOURCE_TYPE, signer=signer)

    report = inspect_file(path)

    assert report.label == label_text() == f"AI-generated by facefuse {facefuse.__version__}"
    assert report.metadata_digital_source_type == SOURCE_URI
    assert report.manifest_present and report.manifest_valid, report.validation_errors
    assert report.validation_errors == []
    assert report.trusted is False  # local CA, not on the C2PA trust list
    assert any("signingCredential.untrusted" in s for s in report.trust_status)
    assert report.digital_source_type == SOURCE_URI
    assert report.action == "c2pa.created"
    assert report.claim_generator == f"facefuse {facefuse.__version__}"
    assert report.title == path.name
    assert report.signer == "facefuse signer"
    lines = report.summary_lines()
    assert f"label: AI-generated by facefuse {facefuse.__version__}" in lines
    assert any(line.startswith("C2PA manifest: valid, signed by facefuse signer") for line in lines)
    json.dumps(report.to_dict())

    decoded = read_image(path)
    if ext == "png":
        np.testing.assert_array_equal(decoded, pixels)
    else:
        assert psnr(decoded, pixels) > 35


def test_png_metadata_chunks(tmp_path: Path, signer: c2pa.Signer) -> None:
    path = tmp_path / "out.png"
    write_image(photo_like(), path, source_type=SOURCE_TYPE, signer=signer)
    with Image.open(path) as im:
        assert im.info["AI-Generated"] == label_text()
        assert im.info["Description"] == label_text()
        assert im.info["Software"] == f"facefuse {facefuse.__version__}"
        xmp = im.info["xmp"]
        assert source_type_uri(SOURCE_TYPE) in (xmp.decode() if isinstance(xmp, bytes) else xmp)
        assert im.getexif()[0x010E] == label_text()


@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_jpeg_and_webp_carry_xmp_and_exif(tmp_path: Path, signer: c2pa.Signer, ext: str) -> None:
    path = tmp_path / f"out.{ext}"
    write_image(photo_like(), path, source_type="compositeSynthetic", signer=signer)
    with Image.open(path) as im:
        xmp = im.info["xmp"]
        exif = im.getexif()
    assert label_text().encode() in xmp
    assert source_type_uri("compositeSynthetic").encode() in xmp
    assert exif[0x010E] == label_text()
    assert exif[0x0131] == f"facefuse {facefuse.__version__}"
    assert inspect_file(path).digital_source_type == source_type_uri("compositeSynthetic")


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_tampered_pixels_invalidate_the_manifest(tmp_path: Path, signer: c2pa.Signer, ext: str) -> None:
    path = tmp_path / f"signed.{ext}"
    write_image(photo_like(), path, source_type=SOURCE_TYPE, signer=signer)
    flip_byte_in_image_data(path)

    report = inspect_file(path)

    assert report.manifest_present
    assert not report.manifest_valid
    assert any("dataHash.mismatch" in error for error in report.validation_errors)
    assert any("INVALID" in line for line in report.summary_lines())


def test_tampered_manifest_bytes_are_invalid_not_a_crash(tmp_path: Path, signer: c2pa.Signer) -> None:
    path = tmp_path / "signed.png"
    write_image(photo_like(), path, source_type=SOURCE_TYPE, signer=signer)
    data = bytearray(path.read_bytes())
    data[data.find(b"caBX") + 200] ^= 0xFF  # inside the embedded manifest store
    path.write_bytes(bytes(data))
    report = inspect_file(path)
    assert report.manifest_present and not report.manifest_valid and report.validation_errors


def test_unlabelled_original_reports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "original.jpg"
    Image.fromarray(photo_like()).save(path, quality=90)
    report = inspect_file(path)
    assert report.label is None
    assert not report.manifest_present and not report.manifest_valid
    lines = report.summary_lines()
    assert "label: none (no AI-generated label found)" in lines
    assert "C2PA manifest: none" in lines


def test_inspect_missing_and_non_image(tmp_path: Path) -> None:
    with pytest.raises(InputMissing):
        inspect_file(tmp_path / "gone.png")
    text = tmp_path / "x.png"
    text.write_text("hello")
    with pytest.raises(InputInvalid):
        inspect_file(text)


def test_write_without_signer_uses_the_config_identity(tmp_path: Path, isolated_config: Path) -> None:
    path = tmp_path / "auto.png"
    write_image(photo_like(), path, source_type=SOURCE_TYPE)
    assert (isolated_config / "c2pa" / "signing-key.pem").exists()
    assert inspect_file(path).manifest_valid


def test_output_file_mode_follows_umask(tmp_path: Path, signer: c2pa.Signer) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "mode.jpg"
        write_image(photo_like(), path, source_type=SOURCE_TYPE, signer=signer)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("name", ["out.bmp", "out.gif", "out"])
def test_unlabellable_output_types_are_usage_errors(tmp_path: Path, signer: c2pa.Signer, name: str) -> None:
    with pytest.raises(FacefuseError) as info:
        write_image(photo_like(), tmp_path / name, source_type=SOURCE_TYPE, signer=signer)
    assert info.value.exit_code == ExitCode.USAGE
    if name.endswith(".bmp"):
        assert "cannot carry the AI-generated label" in str(info.value)
    assert files_in(tmp_path) == {"config"}


def test_write_into_missing_folder(tmp_path: Path, signer: c2pa.Signer) -> None:
    with pytest.raises(OutputDirMissing):
        write_image(photo_like(), tmp_path / "no" / "out.png", source_type=SOURCE_TYPE, signer=signer)


def test_bad_arguments_are_programming_errors(tmp_path: Path, signer: c2pa.Signer) -> None:
    with pytest.raises(ValueError, match="digital source type"):
        write_image(photo_like(), tmp_path / "a.png", source_type="deepfake", signer=signer)
    with pytest.raises(TypeError):
        write_image(
            photo_like().astype(np.float32), tmp_path / "a.png", source_type=SOURCE_TYPE, signer=signer
        )
    with pytest.raises(ValueError):
        write_image(photo_like()[..., :2], tmp_path / "a.png", source_type=SOURCE_TYPE, signer=signer)


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def _failing_sign_into(exc: BaseException):
    def sign_into(source, dest, **kwargs) -> None:
        dest.write(source.read()[:1000])  # half a file on disk, then the failure
        raise exc

    return sign_into


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KeyboardInterrupt(), KeyboardInterrupt),
        (OSError(28, "No space left on device"), OutputWriteFailed),
        (c2pa.C2paError("signing failed"), OutputWriteFailed),
    ],
    ids=["ctrl-c", "disk-full", "c2pa-error"],
)
def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: c2pa.Signer, exc: BaseException, expected
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "existing.png"
    existing.write_bytes(b"previous result")
    monkeypatch.setattr(labels_module, "sign_into", _failing_sign_into(exc))

    with pytest.raises(expected):
        write_image(photo_like(), out_dir / "new.png", source_type=SOURCE_TYPE, signer=signer)
    with pytest.raises(expected):
        write_image(photo_like(), existing, source_type=SOURCE_TYPE, signer=signer)

    assert files_in(out_dir) == {"existing.png"}
    assert existing.read_bytes() == b"previous result"


def test_failed_encode_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: c2pa.Signer
) -> None:
    def boom(self, fp, format=None, **params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(photo_like(), tmp_path / "x.jpg", source_type=SOURCE_TYPE, signer=signer)
    assert files_in(tmp_path) == {"config"}


def test_unwritable_folder_is_output_write_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: c2pa.Signer
) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_module.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputWriteFailed, match="Permission denied"):
        write_image(photo_like(), tmp_path / "x.png", source_type=SOURCE_TYPE, signer=signer)


# ---------------------------------------------------------------------------------------------
# check_output_path
# ---------------------------------------------------------------------------------------------


def test_check_output_path_accepts_a_new_file(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"x")
    assert check_output_path(tmp_path / "out.png", [source]) == tmp_path / "out.png"


def test_check_output_path_same_file_in_many_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"x")
    other = tmp_path / "b.jpg"
    other.write_bytes(b"y")
    link = tmp_path / "link.jpg"
    link.symlink_to(source)
    hard = tmp_path / "hard.jpg"
    os.link(source, hard)
    monkeypatch.chdir(tmp_path)

    for spelling in [source, tmp_path / "." / "a.jpg", Path("a.jpg"), link, hard]:
        with pytest.raises(OutputIsInput):
            check_output_path(spelling, [other, source])


def test_check_output_path_missing_folder_and_bad_type(tmp_path: Path) -> None:
    with pytest.raises(OutputDirMissing):
        check_output_path(tmp_path / "nowhere" / "out.png", [])
    with pytest.raises(FacefuseError) as info:
        check_output_path(tmp_path / "out.bmp", [])
    assert info.value.exit_code == ExitCode.USAGE


# ---------------------------------------------------------------------------------------------
# Signing identity
# ---------------------------------------------------------------------------------------------


def test_identity_is_created_once_and_reused(isolated_config: Path) -> None:
    first = SigningIdentity.load_or_create()
    folder = isolated_config / "c2pa"
    key_file = folder / "signing-key.pem"
    assert first.folder == folder
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert "PRIVATE KEY" not in repr(first)  # the key stays out of logs and tracebacks

    second = SigningIdentity.load_or_create()
    assert second.chain_pem == first.chain_pem and second.key_pem == first.key_pem
    assert [p.name for p in isolated_config.iterdir()] == ["c2pa"]  # no staging folders left


def test_identity_chain_is_leaf_then_root_ca(tmp_path: Path) -> None:
    identity = SigningIdentity.load_or_create(tmp_path / "elsewhere")
    leaf, root = x509.load_pem_x509_certificates(identity.chain_pem)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert leaf.issuer == root.subject
    leaf.verify_directly_issued_by(root)
    assert (tmp_path / "elsewhere" / "c2pa" / "signing-key.pem").exists()


def test_concurrent_creation_agrees_on_one_identity(isolated_config: Path) -> None:
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def create() -> None:
        barrier.wait()
        results.append(SigningIdentity.load_or_create().chain_pem)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert files_in(isolated_config) == {"c2pa"}


def test_damaged_identity_is_reported(isolated_config: Path) -> None:
    SigningIdentity.load_or_create()
    (isolated_config / "c2pa" / "signing-key.pem").write_text("garbage")
    with pytest.raises(OutputWriteFailed, match="delete that folder"):
        SigningIdentity.load_or_create()


def test_config_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(tmp_path / "explicit"))
    assert config_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FACEFUSE_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "facefuse"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "facefuse"


def test_source_type_uri() -> None:
    assert source_type_uri(SOURCE_TYPE) == SOURCE_URI
    assert source_type_uri(SOURCE_URI) == SOURCE_URI
    with pytest.raises(ValueError):
        source_type_uri("madeUp")
