"""The same test images as a phone and the apps around a model present them.

A model that scores well on its own split can lose many points when the images reach it cropped,
squashed or recompressed: ISIC 2018's test images stored as squashed squares cost the quickstart
model 10 points of balanced accuracy (issue 13). Each presentation here changes the stored image
(PIL, before the model card's own preprocessing) the way one link of a real chain does; the
report gives balanced accuracy and melanoma AUC per presentation, and the spread.

Presentations (deterministic, so two models are compared on the same pixels):

- ``as-stored``: the image as it is on disk.
- ``centre-crop``: the largest centred square, as a camera app cropping to 1:1.
- ``squashed``: resized to 256x256 without keeping the aspect ratio, as ISIC 2018's published
  test images and many pipelines store them.
- ``letterbox-16x9``: centred in a black 16:9 frame, as a landscape phone frame.
- ``half-jpeg``: half the resolution, then JPEG at quality 60, as a messaging app sends it.
- ``warm``, ``cool``: white balance moved (red and blue gains 1.12/0.88 and 0.88/1.12), as
  under tungsten light or in shade without correction.
- ``portrait``: rotated 90 degrees, as a phone held upright (a 4:3 image becomes 3:4).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SQUASHED_SIDE = 256
JPEG_QUALITY = 60
WARM_GAINS = (1.12, 1.0, 0.88)


def _centre_crop(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _squashed(image: Image.Image) -> Image.Image:
    return image.resize((SQUASHED_SIDE, SQUASHED_SIDE), Image.Resampling.BILINEAR)


def _letterbox(image: Image.Image, aspect: float = 16 / 9) -> Image.Image:
    width = max(image.width, round(image.height * aspect))
    height = max(image.height, round(width / aspect))
    frame = Image.new("RGB", (width, height))
    frame.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return frame


def _half_jpeg(image: Image.Image) -> Image.Image:
    half = image.resize((max(1, image.width // 2), max(1, image.height // 2)),
                        Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    half.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _white_balance(gains: tuple[float, float, float]) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return apply


PRESENTATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "as-stored": lambda image: image,
    "centre-crop": _centre_crop,
    "squashed": _squashed,
    "letterbox-16x9": _letterbox,
    "half-jpeg": _half_jpeg,
    "warm": _white_balance(WARM_GAINS),
    "cool": _white_balance(WARM_GAINS[::-1]),
    "portrait": lambda image: image.transpose(Image.Transpose.ROTATE_90),
}


class Presented:
    """The model's preprocessing after one presentation (picklable for DataLoader workers)."""

    def __init__(self, name: str, transform: Callable):
        self.name, self.transform = name, transform

    def __call__(self, image: Image.Image):
        return self.transform(PRESENTATIONS[self.name](image))


@dataclass
class RobustnessResult:
    """Scores per presentation, in :data:`PRESENTATIONS` order.

    ``rows``: ``{"presentation", "balanced_accuracy", "balanced_accuracy_ci", "melanoma_auc",
    "accuracy", "agreement"}`` each; ``agreement`` is the share of images whose top-1 class is
    the one the model gives the stored image.
    """

    source: str
    images: int
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def spread(self) -> float:
        """Best minus worst balanced accuracy over the presentations."""
        scores = [row["balanced_accuracy"] for row in self.rows]
        return max(scores) - min(scores)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.images, "spread": self.spread,
                "rows": self.rows}


def robustness_rows(predict: Callable[[Callable], tuple[np.ndarray, np.ndarray]],
                    transform: Callable, classes: list[str], melanoma_class: str | None,
                    *, presentations: list[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Score each presentation.

    Args:
        predict: Takes a PIL image -> tensor transform and gives (probabilities, targets) of
            the evaluated images through it (:func:`~skinedge.evaluate.predict.predict_probs`
            on a dataset built with that transform).
        transform: The model card's preprocessing.
        presentations: Names from :data:`PRESENTATIONS` (default: all).
        progress: Called with each presentation's name before it runs.
    """
    from skinedge.evaluate.metrics import bootstrap_intervals, compute_metrics

    rows, stored_top1 = [], None
    for name in presentations or list(PRESENTATIONS):
        if progress:
            progress(name)
        probs, targets = predict(Presented(name, transform))
        metrics = compute_metrics(targets, probs, classes, melanoma_class=melanoma_class)
        ci = bootstrap_intervals(targets, probs, classes, melanoma_class=melanoma_class,
                                 n_boot=500)
        top1 = probs.argmax(1)
        stored_top1 = top1 if stored_top1 is None else stored_top1
        rows.append({"presentation": name, "balanced_accuracy": metrics["balanced_accuracy"],
                     "balanced_accuracy_ci": ci["balanced_accuracy"],
                     "melanoma_auc": metrics["melanoma_auc"], "accuracy": metrics["accuracy"],
                     "agreement": float((top1 == stored_top1).mean())})
    return rows


def render_robustness(result: RobustnessResult, title: str) -> str:
    """The Markdown table: one row per presentation, then the spread."""
    base = result.rows[0]["balanced_accuracy"]
    lines = [f"# {title}", "",
             f"{result.images} images of `{result.source}`, each presented as below before the "
             "model card's preprocessing (skinedge.evaluate.robustness); Δ: change from the "
             f"first row; agreement: top-1 the same as for the first row.", "",
             "| presentation | bal. acc | 95% interval | Δ bal. acc | mel AUC | acc | agreement |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        lo, hi = row["balanced_accuracy_ci"]
        auc = "-" if row["melanoma_auc"] is None else f"{row['melanoma_auc']:.3f}"
        lines.append(f"| {row['presentation']} | {row['balanced_accuracy']:.3f} | "
                     f"{lo:.3f}-{hi:.3f} | {row['balanced_accuracy'] - base:+.3f} | {auc} | "
                     f"{row['accuracy']:.3f} | {row['agreement']:.1%} |")
    worst = min(result.rows, key=lambda row: row["balanced_accuracy"])
    lines += ["", f"Spread (best minus worst balanced accuracy): {result.spread:.3f}; worst: "
              f"{worst['presentation']}."]
    return "\n".join(lines) + "\n"
