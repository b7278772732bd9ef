"""``explain_images``: Grad-CAM overlays for images, from a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from skinedge.data import build_eval_transform, load_rgb
from skinedge.data.transforms import display_image
from skinedge.errors import ConfigError
from skinedge.explain.gradcam import CamResult, explain_batch
from skinedge.explain.overlays import save_explanation
from skinedge.models import load_checkpoint


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
    model, card = load_checkpoint(checkpoint)
    if target_class is not None and target_class not in card.classes:
        raise ConfigError(f"class {target_class!r} is not one of the model's {card.classes}")
    transform = build_eval_transform(card.preprocess)
    out_dir = Path(out_dir)
    written = []
    for start in range(0, len(images), batch_size):
        chunk = [Path(p) for p in images[start:start + batch_size]]
        pil = [load_rgb(p) for p in chunk]
        inputs = torch.stack([transform(im) for im in pil])
        shown = [display_image(im, card.preprocess) for im in pil]
        targets = [card.classes.index(target_class)] * len(chunk) if target_class else None
        results = explain_batch(model, inputs, shown, target_classes=targets, method=method)
        for path, result, disp in zip(chunk, results, shown):
            name = f"{len(written):03d}_{path.stem}_{method.replace('+', 'p')}.png"
            out = save_explanation(result, disp, out_dir / name,
                                   class_names=card.classes, title=path.name)
            written.append((out, result))
    return written
