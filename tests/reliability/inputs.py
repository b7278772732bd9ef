"""Makers of bad input: images, labels tables, manifests, checkpoints and configs.

Each maker damages a copy it is given (never a shared fixture) and returns what a good error
message must name: the row (``labels.csv:9``), the file, or the field.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import make_image

# --------------------------------------------------------------------------- images
# Each writes one file under ROOT/images and returns its path relative to ROOT.


def _jpeg_bytes(size=(48, 64)) -> bytes:
    buffer = io.BytesIO()
    make_image((150, 100, 80), size, seed=7).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _rgb(size=(40, 40)) -> np.ndarray:
    return np.asarray(make_image((150, 100, 80), size, seed=3))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def missing(root: Path) -> str:
    return "images/ghost.jpg"


def zero_bytes(root: Path) -> str:
    (root / "images/empty.jpg").write_bytes(b"")
    return "images/empty.jpg"


def text_named_jpg(root: Path) -> str:
    (root / "images/notes.jpg").write_text("patient notes, not a photo\n")
    return "images/notes.jpg"


def truncated_jpeg(root: Path) -> str:
    data = _jpeg_bytes()
    (root / "images/half.jpg").write_bytes(data[: len(data) // 2])
    return "images/half.jpg"


def cmyk(root: Path) -> str:
    Image.fromarray(_rgb()).convert("CMYK").save(root / "images/print.jpg")
    return "images/print.jpg"


def rgba_transparent(root: Path) -> str:
    rgba = np.dstack([_rgb(), np.full((40, 40), 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    Image.fromarray(rgba, "RGBA").save(root / "images/cutout.png")
    return "images/cutout.png"


def sixteen_bit(root: Path) -> str:
    depth = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(depth).save(root / "images/deep.png")
    return "images/deep.png"


def grayscale(root: Path) -> str:
    Image.fromarray(_rgb()).convert("L").save(root / "images/gray.jpg")
    return "images/gray.jpg"


def one_pixel(root: Path) -> str:
    Image.new("RGB", (1, 1), (150, 100, 80)).save(root / "images/dot.png")
    return "images/dot.png"


def decompression_bomb(root: Path) -> str:
    """A 100-byte PNG that claims 30000x30000 pixels: refused from its header, never decoded."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (root / "images/bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    return "images/bomb.png"


def exif_rotated(root: Path) -> str:
    """A 48x64 (h x w) JPEG whose EXIF says: rotate 90 degrees to view (a phone held upright)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be rotated 90 degrees clockwise
    make_image((150, 100, 80), (48, 64), seed=11).save(root / "images/phone.jpg", exif=exif)
    return "images/phone.jpg"


# --------------------------------------------------------------------------- labels tables


def labels_rows(root: Path) -> list[list[str]]:
    with (root / "labels.csv").open(newline="") as f:
        return list(csv.reader(f))


def write_labels(root: Path, rows: list[list[str]], *, delimiter: str = ",",
                 newline: str = "\n", bom: bool = False) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator=newline).writerows(rows)
    (root / "labels.csv").write_bytes((("\ufeff" if bom else "") + buffer.getvalue()).encode())


def add_row(root: Path, image: str, dx: str = "nv", lesion: str = "") -> str:
    """Append a labels.csv row; returns its source tag (``labels.csv:<line>``)."""
    rows = labels_rows(root)
    rows.append([image, lesion or f"L_extra_{len(rows)}", dx])
    write_labels(root, rows)
    return f"labels.csv:{len(rows)}"


# --------------------------------------------------------------------------- manifests


def edit_manifest(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


def first_row(doc: dict, split: str) -> dict:
    return next(r for r in doc["rows"] if r["split"] == split)


# --------------------------------------------------------------------------- checkpoints


def copy_checkpoint(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def edit_card(checkpoint: Path, change) -> None:
    card = checkpoint / "card.json"
    doc = json.loads(card.read_text())
    change(doc)
    card.write_text(json.dumps(doc, indent=2))


def flip_bytes(path: Path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_onnx_weights(path: Path, count: int = 20_000) -> None:
    """Invert up to ``count`` bytes of an ONNX file's largest weight tensor: the file still
    parses and runs, with wrong answers (only a hash of the file can tell)."""
    import onnx

    weights = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data))
    data = path.read_bytes()
    flip_bytes(path, data.find(weights.raw_data), min(len(weights.raw_data), count))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
