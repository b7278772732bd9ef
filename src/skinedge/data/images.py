"""Reading dermoscopy images safely.

Every image goes through :func:`load_rgb`, which refuses what would silently change what the
model sees: truncated files, decompression bombs, thumbnails too small to show a lesion, and
colour modes whose conversion to 8-bit RGB is a guess (CMYK without a profile, 16-bit,
grayscale, transparency). The message names the file and says what to do. Phone photos store
their pixels sideways with an EXIF orientation tag; :func:`load_rgb` turns them upright, as
every photo viewer shows them.
"""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from skinedge.errors import DataError

#: Largest image accepted, in pixels (an 8000x6000 dermatoscope frame is 48 MP).
DEFAULT_MAX_PIXELS = 64_000_000
#: Shortest side accepted, in pixels: below it an image is a thumbnail or an icon, not a lesion.
DEFAULT_MIN_SIDE = 32

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
    path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Open an image fully decoded as 8-bit RGB, turned upright by its EXIF orientation.

    Accepted as is: RGB, and RGBA / palette images whose alpha is fully opaque (alpha dropped).

    Args:
        path: Image file.
        max_pixels: Refuse images larger than this (decompression-bomb guard).
        min_side: Refuse images whose shorter side is below this many pixels.

    Returns:
        A loaded PIL image in mode ``RGB`` (no orientation tag left: it is upright).

    Raises:
        ImageError: missing, unreadable, truncated, too large, too small, or a mode listed above.
    """
    return load_rgb_oriented(path, max_pixels=max_pixels, min_side=min_side)[0]


def load_rgb_oriented(
    path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[Image.Image, int]:
    """:func:`load_rgb`, also saying which EXIF orientation was applied.

    Returns:
        ``(image, orientation)``: the upright RGB image and the EXIF orientation tag it was
        turned by (1 when the file had none, 2-8 when it was flipped or rotated).

    Raises:
        ImageError: as :func:`load_rgb`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "missing-file", "file not found; check the path or the labels row")
    try:
        # The size is read from the header: a bomb is refused before anything is decoded.
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    path, "too-large",
                    f"{width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (decompression-bomb guard); downscale it, or for a file "
                    "you trust raise the limit (`skinedge data split --max-pixels`)",
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
            path, "unreadable-image", "not an image PIL can read; replace the file"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            path, "unreadable-image",
            f"cannot be decoded ({exc}); the file is truncated or corrupt, copy it again",
        ) from exc
    return image, orientation


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


def _to_rgb(path: Path, im: Image.Image) -> Image.Image:
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
