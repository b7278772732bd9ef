"""Preprocessed image arrays for calibration, verification and benchmarks.

Export and benchmark stages feed the same float32 NCHW arrays to every runtime, built once with
the model card's preprocessing, so a difference between runtimes is the runtime's, not the
input's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skinedge.data.classes import target_index
from skinedge.data.dataset import LesionDataset
from skinedge.data.transforms import PreprocessConfig, build_eval_transform
from skinedge.errors import DataError


@dataclass
class ImageArrays:
    """``x``: (N, 3, S, S) float32, normalised; ``labels``: class index per image."""

    source: str  # "manifest.json:val" or a folder
    images: list[str]
    labels: np.ndarray
    x: np.ndarray

    @property
    def fingerprint(self) -> str:
        """sha256 of the image list: which images, not their pixels (the manifest has those)."""
        return hashlib.sha256("\n".join(self.images).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.images)


def load_arrays(
    root: Path, images: Sequence[str], labels: Sequence[int], preprocess: PreprocessConfig,
    *, source: str, progress: Callable[[int, int], None] | None = None,
) -> ImageArrays:
    """Load and preprocess images (names relative to ``root``) into one array."""
    dataset = LesionDataset(root, images, labels, build_eval_transform(preprocess))
    size = preprocess.input_size
    x = np.empty((len(dataset), 3, size, size), dtype=np.float32)
    for i in range(len(dataset)):
        x[i] = dataset[i][0].numpy()
        if progress:
            progress(i + 1, len(dataset))
    return ImageArrays(source, list(images), np.asarray(labels, dtype=np.int64), x)


def manifest_arrays(
    manifest, split: str, preprocess: PreprocessConfig, *, limit: int | None = None,
    seed: int = 0, source: str | None = None, progress: Callable[[int, int], None] | None = None,
    exclude: set[str] = frozenset(),
) -> ImageArrays:
    """A manifest split as arrays; ``limit`` keeps a seeded random subset of that many images;
    ``exclude`` leaves out images already used elsewhere."""
    rows = [r for r in manifest.subset(split) if r.image not in exclude]
    if not rows:
        raise DataError(f"{source or 'manifest'}: the {split} split has no images")
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
        rows = [rows[i] for i in keep]
    vocab = manifest.vocabulary  # partial "not-mel" rows: target -1 (NOT_POSITIVE)
    return load_arrays(manifest.root, [r.image for r in rows],
                       [target_index(vocab, r.label) for r in rows],
                       preprocess, source=source or f"manifest:{split}", progress=progress)


def load_thumbnails(
    paths: Sequence[Path], size: int, *, progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Images as (N, size, size, 3) uint8: shorter side resized to ``size`` (Lanczos, so
    downsampling does not alias), then centre-cropped.

    GAN training reads real images this way, and quality metrics pass real images through it
    at the GAN's resolution, so real and generated images are compared at the same detail.

    Raises:
        ImageError: an unreadable image (names the file).
    """
    from PIL import Image

    from skinedge.data.images import load_rgb

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = load_rgb(path, min_side=1)  # GAN samples are as small as the GAN
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - size) // 2, (h - size) // 2
        out[i] = np.asarray(image.crop((left, top, left + size, top + size)))
        if progress:
            progress(i + 1, len(paths))
    return out
