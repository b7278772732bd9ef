"""Losses for imbalanced lesion classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Target of a row known only *not* to be the positive class (ISIC 2020's "benign"): defined
# with the vocabularies, re-exported beside the loss that reads it.
from skinedge.data.classes import NOT_POSITIVE  # noqa: F401


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




class PartialLabelLoss(nn.Module):
    """Cross-entropy that also learns from rows labelled only "not the positive class".

    A row with a class index ``t >= 0`` costs ``-log p_t`` (times ``weight[t]`` when given); a
    row with target :data:`NOT_POSITIVE` costs ``-log(1 - p_pos)``, the likelihood of "any class
    but the positive one", computed as ``logsumexp(logits[others]) - logsumexp(logits)`` so it
    stays finite when ``p_pos`` is close to 1. Partial rows weigh 1. The loss is the weighted
    mean over the batch.

    Args:
        positive_index: Output index of the positive class (melanoma).
        weight: Optional (C,) class weights for the fully labelled rows.
    """

    def __init__(self, positive_index: int, weight: torch.Tensor | None = None):
        super().__init__()
        self.positive_index = positive_index
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C), target (N,) class indices or NOT_POSITIVE -> scalar."""
        if bool((target < NOT_POSITIVE).any()) or bool((target >= logits.shape[1]).any()):
            raise ValueError(f"targets must be class indices or {NOT_POSITIVE} (not positive)")
        log_probs = F.log_softmax(logits.float(), dim=1)
        full = target >= 0
        safe = target.clamp(min=0)
        nll_full = -log_probs.gather(1, safe[:, None])[:, 0]
        others = log_probs.clone()
        others[:, self.positive_index] = -torch.inf
        nll_partial = -torch.logsumexp(others, dim=1)
        losses = torch.where(full, nll_full, nll_partial)
        weights = torch.ones_like(losses)
        if self.weight is not None:
            weights = torch.where(full, self.weight.to(losses.dtype)[safe], weights)
        return (losses * weights).sum() / weights.sum()
