"""Batch inference shared by training-time validation and `skinedge evaluate`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from skinedge.errors import ConfigError

TTA_MODES = ("none", "flips")


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for every item of a dataset, in order.

    Args:
        tta: ``none``, or ``flips``: average the softmax over the image and its horizontal,
            vertical and double flips (dermoscopy has no canonical orientation); 4x the compute.

    Returns:
        (probs (N, C) float64, targets (N,) int64).
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    probs, targets, done = [], [], 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        views = [images] if tta == "none" else [
            images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]
        batch_probs = torch.stack([torch.softmax(model(v).float(), dim=1) for v in views]).mean(0)
        probs.append(batch_probs.cpu().double())
        targets.append(labels)
        done += len(labels)
        if progress:
            progress(done, len(dataset))
    model.train(was_training)
    probs_np = torch.cat(probs).numpy()
    # float32 softmax rows can miss 1 by ~1e-7; renormalise in float64 for the metrics' check.
    probs_np /= probs_np.sum(axis=1, keepdims=True)
    return probs_np, torch.cat(targets).numpy().astype(np.int64)
