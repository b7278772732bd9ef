"""Losses for imbalanced lesion classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def class_weights(counts: Sequence[int], mode: str) -> torch.Tensor | None:
    """Per-class loss weights from training counts, normalised to mean 1 over present classes.

    Args:
        counts: Training images per class.
        mode: ``none``, ``inverse`` (1/n) or ``sqrt_inverse`` (1/sqrt(n)).
    """
    if mode == "none":
        return None
    counts_t = torch.tensor(counts, dtype=torch.float32)
    present = counts_t > 0
    power = 1.0 if mode == "inverse" else 0.5
    weights = torch.zeros_like(counts_t)
    weights[present] = counts_t[present].pow(-power)
    weights[present] /= weights[present].mean()
    return weights


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C), target (N,) -> scalar."""
        ce = F.cross_entropy(logits, target, reduction="none",
                             label_smoothing=self.label_smoothing)
        p_t = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - p_t).pow(self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def build_loss(kind: str, weights: torch.Tensor | None, *, gamma: float = 2.0,
               label_smoothing: float = 0.0) -> nn.Module:
    if kind == "focal":
        return FocalLoss(gamma, weights, label_smoothing)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
