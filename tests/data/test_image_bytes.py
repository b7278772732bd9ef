"""Uploaded image bytes get the checks an image file gets; stored uploads carry no metadata."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from skinedge.data import ImageError, load_rgb, strip_metadata
from skinedge.data.images import load_rgb_oriented
from tests.conftest import make_image

NAME = "lesion-17.jpg"


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _photo(size=(48, 64), seed=11) -> Image.Image:
    return make_image((150, 100, 80), size, seed=seed)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_chunk_types(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kinds.append(data[at + 4:at + 8])
        at += 12 + length
    return kinds


def test_bytes_and_path_give_the_same_upright_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    _photo().save(path, exif=exif, quality=90)
    data = path.read_bytes()

    from_path = load_rgb(path)
    from_bytes, orientation = load_rgb_oriented(data, name=NAME)

    assert orientation == 6
    assert from_bytes.mode == "RGB" and from_bytes.size == (48, 64)  # stored 64 x 48
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_path))
    assert from_bytes.getexif().get(0x0112) is None
    # A bytearray (what some upload readers hand over) reads the same.
    assert np.array_equal(np.asarray(load_rgb(bytearray(data))), np.asarray(from_path))


def _truncated() -> bytes:
    data = _encode(_photo(), "JPEG", quality=90)
    return data[: len(data) // 2]


def _sixteen_bit() -> bytes:
    depth = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    image = Image.fromarray(depth)
    assert image.mode == "I;16"  # the test premise
    return _encode(image, "PNG")


def _transparent() -> bytes:
    rgba = np.dstack([np.asarray(_photo((40, 40))), np.full((40, 40), 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixel data is garbage: only a
    check of the header, before decoding, reports it as too large (decoding would say corrupt)."""
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", b"not zlib data") + _png_chunk(b"IEND", b""))


#: case -> (bytes, load_rgb keyword arguments, kind, phrases the message must contain)
BAD_BYTES = {
    "truncated": (_truncated, {}, "unreadable-image",
                  ["truncated or corrupt", "upload the file again"]),
    "random": (lambda: np.random.default_rng(0).bytes(4096), {}, "unreadable-image",
               ["not an image PIL can read", "upload a JPEG or PNG"]),
    "empty": (lambda: b"", {}, "unreadable-image", ["empty (0 bytes)", "upload it again"]),
    "16-bit": (_sixteen_bit, {}, "unsupported-mode", ["16-bit", "convert it to 8-bit RGB"]),
    "cmyk": (lambda: _encode(_photo().convert("CMYK"), "JPEG"), {}, "unsupported-mode",
             ["CMYK", "export it as 8-bit sRGB"]),
    "grayscale": (lambda: _encode(_photo().convert("L"), "JPEG"), {}, "unsupported-mode",
                  ["grayscale", "use the original colour image"]),
    "transparent": (_transparent, {}, "unsupported-mode", ["transparent pixels", "flatten it"]),
    "over max_pixels": (lambda: _encode(_photo((64, 96)), "JPEG"), {"max_pixels": 48 * 64},
                        "too-large", ["96x64 = 6,144 pixels is over the limit of 3,072",
                                      "decompression-bomb guard", "downscale it and upload"]),
    "header over the default limit": (
        lambda: _header_bomb(9000, 8000), {}, "too-large",
        ["9000x8000 = 72,000,000 pixels is over the limit of 64,000,000", "upload it again"]),
    "header over Pillow's limit": (
        lambda: _header_bomb(30000, 30000), {"max_pixels": 10**12}, "too-large",
        ["decompression-bomb guard", "downscale it"]),
    "too small": (lambda: _encode(Image.new("RGB", (1, 1), (150, 100, 80)), "PNG"), {},
                  "too-small", ["1x1 pixels is too small", "at least 32 px"]),
}


@pytest.mark.parametrize("case", BAD_BYTES)
def test_bad_bytes_are_refused_with_kind_and_name(case):
    make, kwargs, kind, phrases = BAD_BYTES[case]

    with pytest.raises(ImageError) as info:
        load_rgb(make(), name=NAME, **kwargs)

    assert info.value.kind == kind
    assert info.value.path == NAME
    message = str(info.value)
    assert message.startswith(f"{NAME}: ")
    for phrase in phrases:
        assert phrase in message
    # Fixes for files on disk make no sense for an upload.
    assert "--max-pixels" not in message and "copy it again" not in message


def test_bytes_without_a_name_are_called_upload():
    with pytest.raises(ImageError) as info:
        load_rgb(b"")

    assert str(info.value) == "upload: is empty (0 bytes); choose the image file and upload it again"


def test_a_path_is_still_named_by_its_path(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(ImageError) as info:
        load_rgb(path)

    assert str(info.value) == f"{path}: not an image PIL can read; replace the file"


def _metadata_png() -> bytes:
    """A PNG carrying every kind of metadata a camera or an editor writes."""
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0131] = "PatientPhone 1.0"  # Software
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Jane Doe, DOB 1970-01-01")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>Jane Doe</x:xmpmeta>")
    info.add_text("Author", "dr-a", zip=True)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _encode(_photo(), "PNG", exif=exif, icc_profile=icc, dpi=(300, 300), pnginfo=info)


def _metadata_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _encode(_photo(), "JPEG", exif=exif, icc_profile=icc, dpi=(300, 300),
                   comment=b"Jane Doe", xmp=b"<x:xmpmeta>Jane Doe</x:xmpmeta>", quality=95)


@pytest.mark.parametrize("make", [_metadata_png, _metadata_jpeg], ids=["png", "jpeg"])
def test_strip_metadata_keeps_the_pixels_and_nothing_else(make):
    image = load_rgb(make(), name=NAME)
    # The premise: what load_rgb returns still carries the metadata.
    assert "icc_profile" in image.info and image.getexif().get(0x010F) == "CameraMaker"

    png = strip_metadata(image)

    kinds = _png_chunk_types(png)  # no tEXt, zTXt, iTXt, eXIf, iCCP, pHYs
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    assert b"Jane Doe" not in png and b"CameraMaker" not in png
    with Image.open(io.BytesIO(png)) as back:
        assert back.format == "PNG" and back.mode == "RGB"
        assert back.info == {}
        assert len(back.getexif()) == 0
        assert np.array_equal(np.asarray(back), np.asarray(image))


def test_strip_metadata_turns_a_sideways_image_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_photo(), "JPEG", exif=exif, quality=90)
    with Image.open(io.BytesIO(data)) as raw:  # opened directly: still sideways, tag kept
        raw.load()
        png = strip_metadata(raw)

    with Image.open(io.BytesIO(png)) as back:
        assert back.size == (48, 64)
        assert np.array_equal(np.asarray(back), np.asarray(load_rgb(data)))


def test_strip_metadata_refuses_a_mode_png_would_change():
    with pytest.raises(ValueError, match="got mode CMYK"):
        strip_metadata(_photo().convert("CMYK"))


def test_a_jpeg_keeps_its_own_pixels_without_its_metadata():
    """An upright JPEG is kept as its own compressed bytes minus EXIF, XMP, ICC, comments and
    JFIF: decoding gives exactly the pixels of the upload, and no metadata is left."""
    import io

    import numpy as np
    from PIL import Image

    from skinedge.data.images import load_rgb_oriented, metadata_free, strip_jpeg_metadata

    pixels = np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "SECRET-CAMERA"
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, exif=exif.tobytes(),
                                 icc_profile=b"\0" * 128, comment=b"SECRET-COMMENT")
    data = out.getvalue()
    image, orientation = load_rgb_oriented(data)
    kept, media_type = metadata_free(data, image, orientation)
    assert media_type == "image/jpeg" and len(kept) < len(data)
    for secret in (b"SECRET-CAMERA", b"SECRET-COMMENT", b"Exif\0\0", b"ICC_PROFILE", b"JFIF"):
        assert secret not in kept
    decoded = Image.open(io.BytesIO(kept))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))
    assert not decoded.getexif() and "icc_profile" not in decoded.info
    assert strip_jpeg_metadata(b"\xff\xd8\xff\xe1\x00") is None  # cut inside a segment
    assert strip_jpeg_metadata(b"\x89PNG") is None


def test_a_turned_jpeg_or_another_format_is_stored_as_upright_png():
    import io

    import numpy as np
    from PIL import Image

    from skinedge.data.images import load_rgb_oriented, metadata_free

    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (80, 40), (200, 30, 30)).save(out, "JPEG", exif=exif.tobytes())
    image, orientation = load_rgb_oriented(out.getvalue())
    kept, media_type = metadata_free(out.getvalue(), image, orientation)
    assert (orientation, media_type) == (6, "image/png")
    assert Image.open(io.BytesIO(kept)).size == (40, 80)
    webp = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 90, 30)).save(webp, "WEBP")
    image, orientation = load_rgb_oriented(webp.getvalue())
    assert metadata_free(webp.getvalue(), image, orientation)[1] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(metadata_free(webp.getvalue(), image, 1)[0]))).shape \
        == (64, 64, 3)


def test_a_jpeg_with_anything_after_its_end_is_stored_as_png():
    """Multi-picture JPEGs, HDR gain maps and motion photos append data (with metadata of
    their own) after the end of the first image: such a file is not kept as JPEG bytes."""
    import io

    from PIL import Image

    from skinedge.data.images import load_rgb_oriented, metadata_free, strip_jpeg_metadata

    exif = Image.Exif()
    exif[0x010F] = "SECRET-CAMERA"
    first, second = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (64, 48), (200, 90, 60)).save(first, "JPEG")
    Image.new("RGB", (32, 24), (20, 90, 60)).save(second, "JPEG", exif=exif.tobytes())
    data = first.getvalue() + second.getvalue() + b"ftypmp42-fake-video"
    assert strip_jpeg_metadata(data) is None
    image, orientation = load_rgb_oriented(data)
    kept, media_type = metadata_free(data, image, orientation)
    assert media_type == "image/png" and b"SECRET-CAMERA" not in kept


def test_progressive_jpeg_loses_comments_between_scans():
    import io

    import numpy as np
    from PIL import Image

    from skinedge.data.images import strip_jpeg_metadata

    pixels = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", progressive=True, quality=85)
    data = out.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    sneaky = data[:second_scan] + b"\xff\xfe\x00\x10SECRET-COMMENT" + data[second_scan:]
    kept = strip_jpeg_metadata(sneaky)
    assert kept is not None and b"SECRET-COMMENT" not in kept
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kept))),
                          np.asarray(Image.open(io.BytesIO(data))))
