"""Reading dermoscopy images safely.

Every image goes through :func:`load_rgb`, which refuses what would silently change what the
model sees: truncated files, decompression bombs, thumbnails too small to show a lesion, and
colour modes whose conversion to 8-bit RGB is a guess (CMYK without a profile, 16-bit,
grayscale, transparency). The message names the file and says what to do. Phone photos store
their pixels sideways with an EXIF orientation tag; :func:`load_rgb` turns them upright, as
every photo viewer shows them.

The same checks hold for an upload: :func:`load_rgb` also takes the file's ``bytes`` (the
message then names it by ``name``). :func:`strip_metadata` writes the upright pixels back as a
PNG with nothing else in it (no EXIF, GPS, XMP, ICC profile or text), for storing what a
clinician uploaded without what the camera said about the patient.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from skinedge.errors import DataError

#: Largest image accepted, in pixels (an 8000x6000 dermatoscope frame is 48 MP).
DEFAULT_MAX_PIXELS = 64_000_000
#: Formats an upload may be in: photos and scans. Pillow would also open EPS (through
#: Ghostscript), PSD, FITS and more from untrusted bytes; those are refused unread.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
#: Shortest side accepted, in pixels: below it an image is a thumbnail or an icon, not a lesion.
DEFAULT_MIN_SIDE = 32
#: How :func:`load_rgb` names image bytes in its messages when the caller gives no ``name``.
DEFAULT_UPLOAD_NAME = "upload"
#: zlib level of :func:`strip_metadata`'s PNG. Measured on a noisy 2000x1500 dermoscopy photo:
#: level 1 takes 0.3 s and 4.8 MB, level 3 0.5 s and 4.7 MB, Pillow's default 6 1.4 s and 4.1 MB.
STRIP_PNG_COMPRESS_LEVEL = 1

ImageSource = Path | str | bytes | bytearray | memoryview

_CONVERT_HINT = {
    "CMYK": "it is CMYK (print colour), whose conversion to screen RGB depends on a colour "
    "profile; export it as 8-bit sRGB, e.g. "
    "`convert IMG -colorspace sRGB -type TrueColor OUT.jpg`",
    "L": "it is grayscale; dermoscopy models need colour, so use the original colour image",
    "LA": "it is grayscale with transparency; use the original colour image",
    "1": "it is black-and-white; use the original colour image",
    "I;16": "it is 16-bit; convert it to 8-bit RGB (e.g. `convert IMG -depth 8 OUT.png`)",
    "I": "it is 32-bit integer; convert it to 8-bit RGB",
    "F": "it is floating point; convert it to 8-bit RGB",
}


class ImageError(DataError):
    """An image that cannot be used as it is; the message says why and what to do."""

    def __init__(self, path: Path | str, kind: str, reason: str):
        self.path = str(path)
        self.kind = kind
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_rgb(
    source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Open an image fully decoded as 8-bit RGB, turned upright by its EXIF orientation.

    Accepted as is: RGB, and RGBA / palette images whose alpha is fully opaque (alpha dropped).

    Args:
        source: Image file, or the contents of one (``bytes``, e.g. an uploaded file).
        name: How messages name the image; default the path, or ``"upload"`` for bytes.
        max_pixels: Refuse images larger than this (decompression-bomb guard, checked on the
            header before anything is decoded).
        min_side: Refuse images whose shorter side is below this many pixels.

    Returns:
        A loaded PIL image in mode ``RGB`` (no orientation tag left: it is upright).

    Raises:
        ImageError: missing (a path only), empty, unreadable, truncated, too large, too small,
            or a mode listed above.
    """
    return load_rgb_oriented(source, name=name, max_pixels=max_pixels, min_side=min_side)[0]


def load_rgb_oriented(
    source: ImageSource, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[Image.Image, int]:
    """:func:`load_rgb`, also saying which EXIF orientation was applied.

    Returns:
        ``(image, orientation)``: the upright RGB image and the EXIF orientation tag it was
        turned by (1 when the file had none, 2-8 when it was flipped or rotated).

    Raises:
        ImageError: as :func:`load_rgb`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        path = name or DEFAULT_UPLOAD_NAME
        if not data:
            raise ImageError(path, "unreadable-image",
                             "is empty (0 bytes); choose the image file and upload it again")
        fp = io.BytesIO(data)
        fixes = _UPLOAD_FIXES
        formats = UPLOAD_FORMATS
    else:
        fp = Path(source)
        path = name or fp
        if not fp.is_file():
            raise ImageError(path, "missing-file",
                             "file not found; check the path or the labels row")
        fixes = _FILE_FIXES
        formats = None
    try:
        # The size is read from the header: a bomb is refused before anything is decoded.
        with Image.open(fp, formats=formats) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    path, "too-large",
                    f"{width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (decompression-bomb guard); {fixes['too-large']}",
                )
            if min(width, height) < min_side:
                raise ImageError(
                    path, "too-small",
                    f"{width}x{height} pixels is too small (the shorter side must be at least "
                    f"{min_side} px); a thumbnail or icon shows no lesion detail, so use the "
                    "original image",
                )
            if _is_16_bit(im):  # Pillow reads 48-bit PNGs as 8-bit RGB without a word
                raise ImageError(path, "unsupported-mode", _CONVERT_HINT["I;16"])
            im.load()
            orientation = exif_orientation(im)
            if orientation != 1:
                # Also drops the tag, so no later step (preprocess_image) turns it twice.
                ImageOps.exif_transpose(im, in_place=True)
            image = _to_rgb(path, im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too-large", f"refused by the decompression-bomb guard ({exc}); "
                                            "downscale it") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            path, "unreadable-image", f"not an image PIL can read; {fixes['not-an-image']}"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            path, "unreadable-image",
            f"cannot be decoded ({exc}); {fixes['truncated']}",
        ) from exc
    return image, orientation


# What to do, for a file on disk and for uploaded bytes (an upload has no CLI option to raise).
_FILE_FIXES = {
    "too-large": "downscale it, or for a file you trust raise the limit "
                 "(`skinedge data split --max-pixels`)",
    "not-an-image": "replace the file",
    "truncated": "the file is truncated or corrupt, copy it again",
}
_UPLOAD_FIXES = {
    "too-large": "downscale it and upload it again",
    "not-an-image": "upload a JPEG or PNG photo of the lesion (JPEG, PNG, WebP, TIFF, BMP and "
                    "GIF are read)",
    "truncated": "the upload is truncated or corrupt, upload the file again",
}


def strip_metadata(image: Image.Image) -> bytes:
    """PNG bytes of the image's pixels and nothing else.

    No EXIF (camera, GPS, date, orientation), XMP, ICC profile, text chunks or dpi: a fresh image
    is built from the pixels, so nothing in ``image.info`` can travel with them. An EXIF
    orientation still on ``image`` is applied first (:func:`load_rgb` has applied it already),
    so the PNG is upright without the tag.

    Args:
        image: An ``RGB`` image (as :func:`load_rgb` returns), or ``RGBA`` / ``L``.

    Returns:
        PNG file contents (zlib level :data:`STRIP_PNG_COMPRESS_LEVEL`); decoding them gives
        exactly the upright pixels.

    Raises:
        ValueError: a mode PNG would not store as is (CMYK, palette, 16-bit ...); convert with
            :func:`load_rgb` first.
    """
    if image.mode not in ("RGB", "RGBA", "L"):
        raise ValueError(f"strip_metadata takes an RGB, RGBA or L image; got mode {image.mode} "
                         "(read it with load_rgb first)")
    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=STRIP_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


#: JPEG segments that carry metadata, not pixels: APP1 (EXIF, XMP), APP2 (ICC, FlashPix),
#: APP3-APP13 (maker notes, IPTC), APP15, and comments. APP0 (JFIF) goes too: it may hold a
#: thumbnail. APP14 (Adobe) stays: it tells a decoder how the colours were transformed.
_JPEG_METADATA = frozenset({0xE0, *range(0xE1, 0xEE), 0xEF, 0xFE})


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG ``data`` with its metadata segments removed and its compressed pixels left
    byte for byte (no re-encoding, no loss); None when ``data`` is not one JPEG this can walk
    from start to end (the caller then stores :func:`strip_metadata`'s PNG).

    Every segment is walked, those between the scans of a progressive JPEG too, up to the end
    of image. Anything after it (a second picture of a multi-picture file, an HDR gain map, a
    motion photo's video, each with metadata of its own) gives None.
    """
    if data[:2] != b"\xff\xd8":
        return None
    kept, i, end = [b"\xff\xd8"], 2, len(data)
    while i + 2 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:  # end of image: nothing may follow
            if data[i + 2:].strip(b"\x00"):
                return None
            kept.append(b"\xff\xd9")
            return _checked_jpeg(b"".join(kept))
        if marker in (0x01, *range(0xD0, 0xD8), 0xD8) or i + 4 > end:
            return None  # a marker without a length outside a scan: not a plain JPEG
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > end:
            return None
        if marker not in _JPEG_METADATA:
            kept.append(data[i:i + 2 + length])
        i += 2 + length
        if marker == 0xDA:  # start of scan: compressed data up to the next real marker
            scan_end = _scan_end(data, i)
            if scan_end is None:
                return None
            kept.append(data[i:scan_end])
            i = scan_end
    return None


def _scan_end(data: bytes, i: int) -> int | None:
    """Where the entropy-coded data starting at ``i`` ends: the next 0xFF that is neither a
    stuffed zero, a restart marker nor a fill byte."""
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return None
        following = data[i + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            i += 2
        elif following == 0xFF:
            i += 1
        else:
            return i


def _checked_jpeg(stripped: bytes) -> bytes | None:
    try:
        with Image.open(io.BytesIO(stripped), formats=("JPEG",)) as im:
            if im.getexif() or {"exif", "icc_profile", "xmp", "photoshop"} & set(im.info):
                return None
    except (OSError, SyntaxError, ValueError):
        return None
    return stripped


def metadata_free(data: bytes, image: Image.Image, orientation: int) -> tuple[bytes, str]:
    """What to keep of an upload: ``(bytes, media type)`` of the upright image without
    metadata. A JPEG that needed no turning keeps its own compressed pixels
    (:func:`strip_jpeg_metadata`: lossless, and several times smaller than a PNG); anything
    else is :func:`strip_metadata`'s PNG of ``image`` (as :func:`load_rgb_oriented` read it).
    """
    if orientation == 1:
        stripped = strip_jpeg_metadata(data)
        if stripped is not None:
            return stripped, "image/jpeg"
    return strip_metadata(image), "image/png"


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or nonsense)."""
    try:
        value = int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except (TypeError, ValueError, SyntaxError, OSError):  # a broken EXIF block: keep as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _is_16_bit(im: Image.Image) -> bool:
    raw_modes = [str(tile.args) for tile in getattr(im, "tile", None) or []]
    return any(";16" in mode for mode in raw_modes)


def _to_rgb(path: Path | str, im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "P", "PA"):
        rgba = im.convert("RGBA")
        alpha_min, _ = rgba.getchannel("A").getextrema()
        if alpha_min == 255:
            return rgba.convert("RGB")
        raise ImageError(
            path, "unsupported-mode",
            f"it is {im.mode} with transparent pixels; flatten it onto the original background "
            "and save as RGB",
        )
    hint = _CONVERT_HINT.get(im.mode, f"mode {im.mode} is not 8-bit RGB; convert it to RGB")
    raise ImageError(path, "unsupported-mode", hint)
