"""Drawing explanations: a heatmap blended on the image, and the captioned side-by-side PNG.

Works on NumPy arrays (heatmaps from :mod:`skinedge.explain.gradcam`); PIL and
``pytorch_grad_cam``'s colour mapping are imported when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skinedge.utils.io import atomic_write

if TYPE_CHECKING:
    from skinedge.explain.gradcam import CamResult


def blend_heatmap(display_image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` coloured with the jet colour map and blended on ``display_image``.

    Args:
        display_image: (H, W, 3) uint8 RGB image.
        heatmap: (H, W) float32 in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB overlay.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(display_image, dtype=np.float32) / 255.0
    return show_cam_on_image(rgb, heatmap, use_rgb=True)


def save_explanation(
    result: CamResult,
    display_image: np.ndarray,
    path: Path,
    *,
    class_names: Sequence[str],
    title: str | None = None,
) -> Path:
    """Write a PNG: original | overlay side by side, captioned with prediction and target.

    The caption reads e.g. ``predicted: mel (0.83); explained: mel``, wrapped to the image width,
    under an optional title line. The file is written atomically (temporary file + rename).

    Args:
        result: The explanation to render.
        display_image: (H, W, 3) uint8 RGB original, the size of ``result.overlay``.
        path: Destination ``.png``; parent folders are created.
        class_names: Name per class index, as many as ``result.probabilities``.
        title: Optional first caption line (e.g. the image file name).

    Returns:
        ``path``.

    Raises:
        ValueError: Not a ``.png`` path, mismatched image size or class-name count.
    """
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"explanations are written as PNG; got {path}")
    original = np.asarray(display_image)
    if original.dtype != np.uint8 or original.shape != result.overlay.shape:
        raise ValueError(
            f"display image must be uint8 of shape {result.overlay.shape}; "
            f"got {original.dtype} {original.shape}"
        )
    if len(class_names) != len(result.probabilities):
        raise ValueError(
            f"got {len(class_names)} class names for {len(result.probabilities)} classes"
        )

    height, width = original.shape[:2]
    font = ImageFont.load_default(size=max(10, width // 14))
    probability = float(result.probabilities[result.predicted_class])
    caption = (
        f"predicted: {class_names[result.predicted_class]} ({probability:.2f}); "
        f"explained: {class_names[result.target_class]}"
    )
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [] if title is None else _wrap(measure, title, font, 2 * width - 8)
    lines += _wrap(measure, caption, font, 2 * width - 8)
    line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 2

    canvas = Image.new("RGB", (2 * width, height + line_height * len(lines) + 8), "white")
    canvas.paste(Image.fromarray(original), (0, 0))
    canvas.paste(Image.fromarray(result.overlay), (width, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, height + 4 + i * line_height), line, fill="black", font=font)

    return atomic_write(path, lambda f: canvas.save(f, format="PNG"))


def _wrap(draw: object, text: str, font: object, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``max_width`` pixels wide (long words kept)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= max_width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines
