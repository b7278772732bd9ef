"""Stratified, grouped train/val/test splits.

Images of one lesion (HAM10000 has up to six photos of one lesion) or one patient (ISIC 2020)
must stay in one split, or the test score measures memory of the lesion, not diagnosis. Groups
are stratified by their label so each split keeps the class balance, rare classes included.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

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


class SplitRow(Protocol):
    """A row of a split (``ManifestRow``): where an image went."""

    image: str
    group: str
    label: str
    split: str


def sparse_class_warnings(rows: Sequence[SplitRow], codes: Sequence[str],
                          ratios: Sequence[float]) -> list[str]:
    """Classes a split cannot serve, one warning each (the empty ones in one line).

    A class with no image gets a model output that is never trained; one with a single image
    or a single lesion (or patient) lies in one split only, so it is either learned and never
    tested, or tested and never learned; one with fewer lesions than splits misses a split.
    ``skinedge train`` refuses classes with too few training images (``data.min_images_per_class``).

    Args:
        rows: The split's rows.
        codes: The class vocabulary, in order.
        ratios: train/val/test fractions; a split with ratio 0 is meant to be empty.

    Returns:
        Messages naming the class, its images and lesions and the splits it misses.
    """
    wanted = [s for s, ratio in zip(SPLITS, ratios) if ratio > 0]
    images: dict[str, list[str]] = defaultdict(list)
    groups: dict[str, set[str]] = defaultdict(set)
    splits: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        images[r.label].append(r.image)
        groups[r.label].add(r.group)
        splits[r.label][r.split] += 1
    warnings = []
    empty = [c for c in codes if not images[c]]
    if empty:
        warnings.append(
            f"{len(empty)} class(es) have no images: {', '.join(empty)}; the model gets an output "
            "for each that is never trained (expected for ISIC 2019's 'unk'; otherwise check the "
            "labels, or the vocabulary chosen with --classes)")
    fix = "add images of it and split again, or leave it out of the labels"
    for code in codes:
        if not images[code]:
            continue
        missing = [s for s in wanted if not splits[code][s]]
        present = ", ".join(s for s in SPLITS if splits[code][s])
        if len(images[code]) == 1:
            warnings.append(f"class {code!r} has only 1 image ({images[code][0]}), in {present}: "
                            f"it cannot be both learned and tested; {fix}")
        elif len(groups[code]) == 1:
            warnings.append(f"class {code!r} has {len(images[code])} images of one lesion/patient "
                            f"({next(iter(groups[code]))}), all in {present}: it cannot be both "
                            f"learned and tested; {fix}")
        elif missing:
            warnings.append(f"class {code!r} has {len(groups[code])} lesions/patients "
                            f"({len(images[code])} images): too few for every split, none in "
                            f"{', '.join(missing)}; {fix}")
    return warnings


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
