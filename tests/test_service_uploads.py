"""The API's cheap upload check: it must refuse exactly what the worker's full decode refuses for
truncated files, in every format, without decoding the pixels of JPEG and PNG uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import media
from PIL import Image

from facefuse.errors import InputInvalid, TooManyPixels
from facefuse.media.image import check_image_data, read_image_data
from facefuse.service.uploads import UnsupportedMedia, check_image


def encoded(fmt: str) -> bytes:
    rgb = np.asarray(Image.open(media("images/obama-240p.jpg")).convert("RGB"))
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_cheap_check_agrees_with_the_full_decode(fmt):
    data = encoded(fmt)
    got_format, size = check_image_data(data, name="target")
    assert got_format == fmt and size == read_image_data(data).shape[1::-1]
    for cut in (len(data) // 2, len(data) - 40):
        with pytest.raises(InputInvalid, match="target"):
            read_image_data(data[:cut], name="target")
        with pytest.raises(InputInvalid, match="target"):
            check_image_data(data[:cut], name="target")


def test_cheap_check_does_not_decode_pixels(monkeypatch):
    from PIL import ImageFile

    files = {fmt: encoded(fmt) for fmt in ("JPEG", "PNG", "BMP")}

    loads = []
    real_load = ImageFile.ImageFile.load

    def counted_load(self):
        loads.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    for fmt in ("JPEG", "PNG"):
        check_image_data(files[fmt])
    assert loads == []
    check_image_data(files["BMP"])  # other formats: the full decode is the check
    assert loads and set(loads) == {"BMP"}


def test_upload_check_limits_and_types():
    data = media("images/biden.jpg").read_bytes()
    checked = check_image(io.BytesIO(data), "source 1", 40_000_000, decode=False)
    assert checked.kind == "jpg" and checked.rgb is None and checked.data == data
    with pytest.raises(TooManyPixels, match="source 1"):
        check_image(io.BytesIO(data), "source 1", 1000, decode=False)
    with pytest.raises(UnsupportedMedia):
        check_image(io.BytesIO(b"GIF89a" + data), "source 1", 40_000_000, decode=False)
    # Truncated sources are refused too, and a PNG chunk with a bad CRC.
    with pytest.raises(InputInvalid, match="source 1"):
        check_image(io.BytesIO(data[:-2]), "source 1", 40_000_000, decode=False)
    png = bytearray(encoded("PNG"))
    png[len(png) // 2] ^= 0xFF
    with pytest.raises(InputInvalid, match="CRC"):
        check_image(io.BytesIO(bytes(png)), "source 1", 40_000_000, decode=False)


def test_damage_that_keeps_the_structure_is_left_to_the_worker_decode():
    # A JPEG cut short and closed again with an end marker passes the cheap check; the worker's
    # strict decode (the same as the CLI's) refuses it, so the job fails with input_invalid.
    data = media("images/biden.jpg").read_bytes()
    forged = data[: len(data) // 2] + b"\xff\xd9"
    check_image_data(forged, name="target")
    with pytest.raises(InputInvalid, match="target"):
        read_image_data(forged, name="target")
