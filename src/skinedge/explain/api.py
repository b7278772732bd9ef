"""Grad-CAM from a checkpoint: :class:`Explainer` for one image at a time (the service),
``explain_images`` for files (the CLI), both on the same per-batch code."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinedge.data import build_eval_transform, load_rgb
from skinedge.data.transforms import display_image
from skinedge.errors import ConfigError
from skinedge.explain.gradcam import CamResult, _cam_class_name, explain_batch
from skinedge.explain.overlays import save_explanation
from skinedge.models import ModelCard, load_checkpoint

#: zlib level of :meth:`Explainer.overlay_png`: overlays are input-sized (a few hundred px a
#: side), so a fast level costs a few kB and saves milliseconds per request.
_OVERLAY_PNG_COMPRESS_LEVEL = 3


class Explainer:
    """Grad-CAM of one checkpoint, loaded once, for one image at a time; shared by threads.

    CAM sets hooks and parameter flags on the shared model, so the model work of each call
    holds a lock; preprocessing and PNG encoding run outside it.

    Attributes:
        card: The checkpoint's model card (classes, preprocessing).
        method: ``gradcam``, ``gradcam++`` or ``eigencam``.

    Example::

        explainer = Explainer("runs/x/train/best")
        png = explainer.overlay_png(load_rgb(upload_bytes), target_class="mel")
    """

    card: ModelCard
    method: str

    def __init__(self, checkpoint: Path | str, method: str = "gradcam"):
        """Load ``checkpoint``.

        Raises:
            ConfigError: ``method`` is not a CAM method.
            NotFoundError, ModelError: as :func:`skinedge.models.load_checkpoint`.
        """
        _cam_class_name(method)  # an unknown method fails before the model is loaded
        self.method = method
        self.model, self.card = load_checkpoint(checkpoint)
        self._transform = build_eval_transform(self.card.preprocess)
        self._lock = threading.Lock()

    def class_index(self, target_class: str | None) -> int | None:
        """Index of class code ``target_class`` in the card; None for None (the prediction).

        Raises:
            ConfigError: ``target_class`` is not one of the model's classes.
        """
        if target_class is None:
            return None
        if target_class not in self.card.classes:
            raise ConfigError(f"class {target_class!r} is not one of the model's "
                              f"{self.card.classes}")
        return self.card.classes.index(target_class)

    def explain(self, image: Image.Image, target_class: str | None = None) -> CamResult:
        """Grad-CAM of one image.

        Args:
            image: Upright RGB image of any size (as :func:`skinedge.data.load_rgb` returns);
                preprocessed as the card says.
            target_class: Class code to explain; the predicted class when None.

        Returns:
            The result; ``overlay`` is (S, S, 3) uint8 at the card's display geometry.

        Raises:
            ConfigError: ``target_class`` is not one of the model's classes.
        """
        ((result, _),) = self.explain_many([image], target_class)
        return result

    def overlay_png(self, image: Image.Image, target_class: str | None = None) -> bytes:
        """PNG bytes of :meth:`explain`'s overlay alone: the heatmap blended on the display
        image (S x S, RGB), no caption."""
        result = self.explain(image, target_class)
        buffer = io.BytesIO()
        Image.fromarray(result.overlay, "RGB").save(
            buffer, format="PNG", compress_level=_OVERLAY_PNG_COMPRESS_LEVEL)
        return buffer.getvalue()

    def explain_many(
        self, images: Sequence[Image.Image], target_class: str | None = None
    ) -> list[tuple[CamResult, np.ndarray]]:
        """Grad-CAM of a batch of upright RGB images, in one model call.

        Returns:
            ``(result, display image)`` per image, in input order; the display image is the
            (S, S, 3) uint8 the overlay was drawn on.

        Raises:
            ConfigError: ``target_class`` is not one of the model's classes.
            ValueError: an image that is not a PIL ``RGB`` image (read it with ``load_rgb``).
        """
        target = self.class_index(target_class)
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image) or image.mode != "RGB":
                got = image.mode if isinstance(image, Image.Image) else type(image).__name__
                raise ValueError(f"image {i} must be a PIL RGB image (from load_rgb); got {got}")
        inputs = torch.stack([self._transform(im) for im in images])
        shown = [display_image(im, self.card.preprocess) for im in images]
        targets = None if target is None else [target] * len(images)
        with self._lock:
            results = explain_batch(self.model, inputs, shown, target_classes=targets,
                                    method=self.method, temperature=self.card.temperature)
        return list(zip(results, shown))


def explain_images(
    checkpoint: Path | str,
    images: Sequence[Path | str],
    out_dir: Path | str,
    *,
    target_class: str | None = None,
    method: str = "gradcam",
    batch_size: int = 8,
) -> list[tuple[Path, CamResult]]:
    """Write ``NNN_<image stem>_<method>.png`` per image: original | overlay, with the prediction.

    NNN numbers the inputs, so two files named alike in different folders never collide.

    Args:
        checkpoint: Checkpoint folder.
        images: Image files (any size; preprocessed as the model card says).
        out_dir: Output folder.
        target_class: Class code to explain (``mel``); the predicted class when None.
        method: ``gradcam``, ``gradcam++`` or ``eigencam``.

    Raises:
        ConfigError: ``target_class`` is not one of the model's classes.
        ImageError: an image is missing or unreadable (names the file).
    """
    explainer = Explainer(checkpoint, method)
    explainer.class_index(target_class)  # an unknown class fails before any image is read
    out_dir = Path(out_dir)
    written = []
    for start in range(0, len(images), batch_size):
        chunk = [Path(p) for p in images[start:start + batch_size]]
        explained = explainer.explain_many([load_rgb(p) for p in chunk], target_class)
        for path, (result, disp) in zip(chunk, explained):
            name = f"{len(written):03d}_{path.stem}_{method.replace('+', 'p')}.png"
            out = save_explanation(result, disp, out_dir / name,
                                   class_names=explainer.card.classes, title=path.name)
            written.append((out, result))
    return written
