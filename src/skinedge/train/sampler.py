"""One sampler for one process or many (DDP): shuffled or class-balanced, sharded by rank."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler[int]):
    """Epoch-seeded indices, split across ranks into shards of equal length.

    When the dataset does not divide by ``world_size``, the first few indices of the epoch's
    order are repeated (at most ``world_size - 1``), so every rank runs the same number of
    batches and DDP never waits on a rank that ran out.

    With ``weights`` it draws with replacement (a balanced sampler: weight 1/n_class per
    image); without, it is a permutation. Every rank computes the same global order from
    ``(seed, epoch)`` and takes every ``world_size``-th index, so resuming at an epoch
    reproduces the same batches.

    Args:
        num_items: Dataset length.
        weights: Optional per-item sampling weights (N,).
        seed: Base seed.
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(self, num_items: int, weights: Sequence[float] | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.num_items = num_items
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = len(self) * self.world_size
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g)
        else:
            order = torch.randperm(self.num_items, generator=g)
            if total > self.num_items:  # every rank gets the same number of batches
                order = torch.cat([order, order[: total - self.num_items]])
        return iter(order[self.rank:total:self.world_size].tolist())


def balanced_weights(targets: Sequence[int], num_classes: int) -> list[float]:
    """Weight 1 / (images of its class) per image; rows labelled only "not melanoma"
    (target -1) are a stratum of their own."""
    counts = Counter(targets)
    return [1.0 / counts[t] for t in targets]
