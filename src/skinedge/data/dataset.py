"""Torch dataset over manifest rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from skinedge.data.classes import target_index
from skinedge.data.images import ImageError, load_rgb
from skinedge.errors import DataError


class LesionDataset(TorchDataset):
    """Images and class indices.

    Args:
        root: Folder the image paths are relative to.
        images: Image paths relative to ``root``.
        targets: Class index per image, or ``NOT_POSITIVE`` (-1) for a row labelled only
            "not melanoma" (see :func:`skinedge.data.classes.target_index`).
        transform: PIL RGB image -> tensor (3, S, S).
    """

    def __init__(
        self, root: Path, images: Sequence[str], targets: Sequence[int],
        transform: Callable,
    ):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.root = Path(root)
        self.images = list(images)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            # load_rgb: EXIF orientation, mode and bomb checks as at intake. No minimum side:
            # real rows passed it when the manifest was made, and synthetic images come at the
            # GAN's resolution (16-64 px).
            image = load_rgb(self.root / self.images[index], min_side=1)
        except ImageError as exc:
            # DataLoader workers re-raise exceptions as `type(exc)(message)`; ImageError needs
            # three arguments, so hand over a plain DataError that keeps the file and reason.
            raise DataError(str(exc)) from exc
        return self.transform(image), self.targets[index]

    @classmethod
    def from_manifest(cls, manifest, split: str, transform: Callable) -> LesionDataset:
        rows = manifest.subset(split)
        vocab = manifest.vocabulary
        return cls(manifest.root, [r.image for r in rows],
                   [target_index(vocab, r.label) for r in rows], transform)
