"""Outlier exposure (Hendrycks, Mazeika and Dietterich, ICLR 2019): training that also shows
the classifier pictures that are no skin lesion, and teaches it to be unsure of them.

A classifier trained on lesions alone is as sure of a cat as of a naevus, so the card's lesion
check (:mod:`skinedge.evaluate.ood`, a threshold on the calibrated logits) lets many such
pictures through. With ``outliers.weight`` > 0, a share of every epoch's items are non-lesion
pictures (:func:`skinedge.evaluate.ood.outlier_sources`: packaged photographs and drawn
patterns, never the half held out to grade the check) passed through the same training
augmentation, and their loss is the cross-entropy to the uniform distribution::

    loss = CE(lesions) + weight * mean over outliers of -(1/C) sum_c log softmax(z)_c

Nothing changes at inference: no new output and no new layer, so every export, runtime and
app computes the check as before, from the logits.

Example (config)::

    outliers:
      weight: 0.5   # Hendrycks et al.'s value; 0 turns it off
      share: 0.1    # of each epoch's training items
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from skinedge.evaluate.ood import OutlierSource, outlier_sources

__all__ = ["OUTLIER", "OutlierExposureLoss", "OutlierSet", "outlier_count", "sampling_weights",
           "with_outliers"]

#: Training target of a non-lesion picture (class targets are ``0 .. C-1``; -1 is "not mel").
OUTLIER = -2


class OutlierSet(Dataset):
    """``length`` non-lesion pictures, each drawn anew from ``sources[index % len(sources)]``
    with a generator seeded from torch's (so a seeded epoch draws the same pictures again, in
    the main process as in loader workers) and passed through ``transform``.

    Items are ``(image, OUTLIER, *extras)``; ``targets`` lists them as a train set's do.
    ``extras`` stand in for what the items of the set they join carry besides image and target
    (a distilled student's teacher logits), so both collate into one batch."""

    def __init__(self, sources: Sequence[OutlierSource], length: int, transform: Callable,
                 extras: tuple[torch.Tensor, ...] = ()):
        if not sources:
            raise ValueError("OutlierSet needs at least one source")
        self.sources = list(sources)
        self.targets = [OUTLIER] * length
        self.transform = transform
        self.extras = extras

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        rng = np.random.default_rng(int(torch.randint(2**62, ()).item()))
        return self.transform(self.sources[index % len(self.sources)].draw(rng)), OUTLIER, \
            *self.extras

    def card_info(self, weight: float, share: float) -> dict:
        return {"weight": weight, "share": share, "images_per_epoch": len(self),
                "groups": [s.group for s in self.sources]}


def outlier_count(lesions: int, share: float) -> int:
    """Outliers to add to ``lesions`` training items so they are ``share`` of the whole."""
    return max(1, round(lesions * share / (1.0 - share)))


def with_outliers(train_set: Dataset, share: float, transform: Callable,
                  extras: tuple[torch.Tensor, ...] = ()) -> tuple[Dataset, OutlierSet]:
    """The train split followed by its :class:`OutlierSet` (``share`` of the items, carrying
    ``extras``), and that set. The joined dataset has ``targets`` (the split's, then
    :data:`OUTLIER` for each)."""
    outliers = OutlierSet(outlier_sources(), outlier_count(len(train_set), share), transform,
                          extras)
    joined = ConcatDataset([train_set, outliers])
    joined.targets = [*train_set.targets, *outliers.targets]
    return joined, outliers


def sampling_weights(targets: Sequence[int], share: float,
                     lesion_weights: Callable[[Sequence[int]], list[float]]) -> list[float]:
    """Per-item weights for a sampler that draws outliers ``share`` of the time and lesions
    by ``lesion_weights`` (e.g. class-balanced) the rest of the time."""
    is_outlier = [t == OUTLIER for t in targets]
    lesions = lesion_weights([t for t, out in zip(targets, is_outlier) if not out])
    total, outliers = sum(lesions), sum(is_outlier)
    per_outlier = share / (1.0 - share) * total / outliers if outliers else 0.0
    it = iter(lesions)
    return [per_outlier if out else next(it) for out in is_outlier]


class OutlierExposureLoss(nn.Module):
    """``label_loss`` on the lesion rows plus ``weight`` times the mean cross-entropy to the
    uniform distribution on the rows whose target is :data:`OUTLIER`.

    Args:
        label_loss: The loss of the lesion rows, called as ``label_loss(logits, targets,
            *extras)`` with the lesion rows of any extras (a distillation loss's teacher
            logits): the outlier rows' stand-ins never reach it.
        weight: The outlier term's weight (Hendrycks et al.: 0.5).
    """

    def __init__(self, label_loss: nn.Module, weight: float):
        super().__init__()
        self.label_loss = label_loss
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                *extras: torch.Tensor) -> torch.Tensor:
        """logits (N, C), target (N,), extras (N, ...) -> scalar."""
        outlier = target == OUTLIER
        lesion = ~outlier
        loss = (self.label_loss(logits[lesion], target[lesion], *(e[lesion] for e in extras))
                if bool(lesion.any()) else logits.sum() * 0.0)
        if bool(outlier.any()):
            uniform_ce = -F.log_softmax(logits[outlier].float(), dim=1).mean(dim=1)
            loss = loss + self.weight * uniform_ce.mean()
        return loss
