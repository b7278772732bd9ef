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
def predict_logits(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    tta: str = "none",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw outputs for every item of a dataset, in order, per view.

    Args:
        tta: ``none`` (one view), or ``flips``: the image and its horizontal, vertical and
            double flips (dermoscopy has no canonical orientation); 4x the compute.

    Returns:
        (logits (V, N, C) float64, V views; targets (N,) int64).
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    logits, targets, done = [], [], 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        views = [images] if tta == "none" else [
            images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]
        logits.append(torch.stack([model(v).float() for v in views]).cpu().double())
        targets.append(labels)
        done += len(labels)
        if progress:
            progress(done, len(dataset))
    model.train(was_training)
    return torch.cat(logits, dim=1).numpy(), torch.cat(targets).numpy().astype(np.int64)


def probs_from_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(V, N, C) logits -> (N, C) probabilities: the mean over views of
    ``softmax(logits / temperature)``, rows renormalised in float64."""
    from skinedge.evaluate.calibration import scaled_softmax

    probs = np.mean([scaled_softmax(view, temperature) for view in logits], axis=0)
    return probs / probs.sum(axis=1, keepdims=True)


def predict_probs(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    tta: str = "none",
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for every item of a dataset, in order.

    Args:
        tta: ``none``, or ``flips``: average the softmax over the image and its horizontal,
            vertical and double flips (see :func:`predict_logits`).
        temperature: Divides the logits before the softmax (a checkpoint's
            ``card.temperature``; 1 for raw probabilities).

    Returns:
        (probs (N, C) float64, targets (N,) int64).
    """
    logits, targets = predict_logits(model, dataset, batch_size=batch_size,
                                     num_workers=num_workers, device=device, tta=tta,
                                     progress=progress)
    return probs_from_logits(logits, temperature), targets
