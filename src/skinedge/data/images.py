"""Reading dermoscopy images safely.

Every image goes through :func:`load_rgb`, which refuses what would silently change what the
model sees: truncated files, decompression bombs, and colour modes whose conversion to 8-bit
RGB is a guess (CMYK without a profile, 16-bit, grayscale, transparency). The message names the
file and says what to do.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from skinedge.errors import DataError

#: Largest image accepted, in pixels (an 8000x6000 dermatoscope frame is 48 MP).
DEFAULT_MAX_PIXELS = 64_000_000

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


def load_rgb(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image fully decoded as 8-bit RGB.

    Accepted as is: RGB, and RGBA / palette images whose alpha is fully opaque (alpha dropped).

    Args:
        path: Image file.
        max_pixels: Refuse images larger than this (decompression-bomb guard).

    Returns:
        A loaded PIL image in mode ``RGB``.

    Raises:
        ImageError: missing, unreadable, truncated, too large, or a mode listed above.
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
                    f"{max_pixels:,} (decompression-bomb guard); downscale it or raise "
                    "--max-pixels if the file is trusted",
                )
            if _is_16_bit(im):  # Pillow reads 48-bit PNGs as 8-bit RGB without a word
                raise ImageError(path, "unsupported-mode", _CONVERT_HINT["I;16"])
            im.load()
            image = _to_rgb(path, im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too-large", f"refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            path, "unreadable-image", "not an image PIL can read; replace the file"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            path, "unreadable-image",
            f"cannot be decoded ({exc}); the file is truncated or corrupt, copy it again",
        ) from exc
    return image


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
