"""Stratified, grouped train/val/test splits.

Images of one lesion (HAM10000 has up to six photos of one lesion) or one patient (ISIC 2020)
must stay in one split, or the test score measures memory of the lesion, not diagnosis. Groups
are stratified by their label so each split keeps the class balance, rare classes included.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from skinedge.data.records import Record
from skinedge.errors import ConfigError

SPLITS = ("train", "val", "test")


def split_groups(
    records: Sequence[Record], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """Assign every group to a split.

    Groups are bucketed by their most frequent label (ties broken by class name), shuffled with
    ``seed`` within each bucket, and cut by ``ratios``; the largest-remainder rule makes the
    counts add up, and every split gets at least one group of a class that has three or more.

    Args:
        records: Labelled rows.
        ratios: train/val/test fractions, summing to 1.
        seed: Shuffle seed; the same records and seed give the same split on any machine.

    Returns:
        Map group -> split name.

    Raises:
        ConfigError: ratios are not three non-negative numbers summing to 1.
    """
    check_ratios(ratios)
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        labels_of[r.group][r.label] += 1
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, counts in labels_of.items():
        top = max(sorted(counts), key=lambda c: counts[c])
        by_label[top].append(group)

    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        rng.shuffle(groups)
        sizes = _allocate(len(groups), ratios)
        start = 0
        for split, size in zip(SPLITS, sizes):
            for g in groups[start:start + size]:
                assignment[g] = split
            start += size
    return assignment


def check_ratios(ratios: Sequence[float]) -> None:
    """Raise ConfigError unless ratios are three non-negative numbers summing to 1."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")


def _allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split n items by ratios with the largest-remainder rule."""
    exact = [n * r for r in ratios]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    # A class with >= 3 groups appears in every split with a non-zero ratio.
    if n >= 3:
        for i, r in enumerate(ratios):
            if r > 0 and sizes[i] == 0:
                donor = max(range(len(sizes)), key=lambda j: sizes[j])
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes
