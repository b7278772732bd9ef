"""Lesion-grouped, stratified k-fold splits of a manifest, for experiments that need every image
tested once (an ablation whose single test split is too small to resolve its question).

Fold ``i`` tests on the lesions dealt to fold ``i``; the other folds' lesions are split again
into train and validation (stratified, grouped, ``val_fraction`` of them to validation). The
rows, hashes and root are the source manifest's, so a fold manifest needs no re-reading of the
images, and every fold has its own ``split_hash`` (a GAN or classifier trained on one fold is
refused on another).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace

from skinedge.data.manifest import Manifest, merge_groups_sharing_files
from skinedge.data.records import Record
from skinedge.data.splits import split_groups
from skinedge.errors import ConfigError


def fold_of_groups(rows, k: int, seed: int = 0) -> dict[str, int]:
    """Deal every group to one of ``k`` folds, class by class.

    Groups are bucketed by their most frequent label (ties broken by class name), shuffled with
    ``seed`` within each bucket and dealt in turn, continuing where the previous class stopped,
    so every fold gets ``n // k`` or ``n // k + 1`` groups of each class and fold sizes differ
    by at most one group per class.

    Args:
        rows: Rows with ``group`` and ``label``.
        k: Number of folds (at least 2).
        seed: Shuffle seed.

    Returns:
        Map group -> fold index.

    Raises:
        ConfigError: ``k`` below 2, or more folds than groups.
    """
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        labels_of[r.group][r.label] += 1
    if k < 2 or k > len(labels_of):
        raise ConfigError(f"folds={k}: choose from 2 to the number of lesions/patients "
                          f"({len(labels_of)})")
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, counts in labels_of.items():
        by_label[max(sorted(counts), key=lambda c: counts[c])].append(group)
    rng = random.Random(seed)
    fold_of, turn = {}, 0
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        rng.shuffle(groups)
        for group in groups:
            fold_of[group] = turn % k
            turn += 1
    return fold_of


def dealt_groups(manifest: Manifest) -> dict[str, str]:
    """Image -> the group the folds deal it with: its lesion (patient), byte-identical files
    under different lesion ids joined, as make_manifest keeps them together. What a bootstrap
    over the folds' test images must resample too."""
    records = [Record(r.image, r.group, r.label, r.source) for r in manifest.rows]
    merged = merge_groups_sharing_files(records, {r.image: r.sha256 for r in manifest.rows})
    return {r.image: merged[r.group] for r in manifest.rows}


def fold_manifests(manifest: Manifest, k: int = 5, *, seed: int = 0,
                   val_fraction: float = 0.15) -> list[Manifest]:
    """The ``k`` fold manifests of ``manifest``'s rows (all of its splits pooled).

    Args:
        manifest: The source split; its rows, hashes and root are reused.
        k: Number of folds.
        seed: Shuffle seed of the folds and of each fold's train/validation cut.
        val_fraction: Share of the non-test lesions of each fold that go to validation.

    Raises:
        ConfigError: a bad ``k`` or ``val_fraction``; a multi-source manifest (its sources
            would need folds of their own).
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction}: choose a fraction between 0 and 1")
    if manifest.sources:
        raise ConfigError("k-fold splits of a multi-source manifest are not supported; make "
                          "the folds from one source's manifest")
    group_of = dealt_groups(manifest)
    records = [Record(r.image, group_of[r.image], r.label, r.source) for r in manifest.rows]
    fold_of = fold_of_groups(records, k, seed)
    folds = []
    for i in range(k):
        rest = [r for r in records if fold_of[r.group] != i]
        inner = split_groups(rest, (1 - val_fraction, val_fraction, 0.0), seed + i)
        rows = [replace(row, split="test" if fold_of[r.group] == i else inner[r.group])
                for row, r in zip(manifest.rows, records)]
        share = 1 / k
        folds.append(replace(manifest, rows=rows, seed=seed,
                             ratios=((1 - share) * (1 - val_fraction),
                                     (1 - share) * val_fraction, share)))
    return folds
