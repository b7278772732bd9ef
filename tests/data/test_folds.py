"""Lesion-grouped stratified k-fold manifests: every image tested once, lesions whole."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from skinedge.data.folds import fold_manifests
from skinedge.data.manifest import Manifest, ManifestRow

CLASSES = {"nv": 40, "mel": 12, "bkl": 9, "df": 4, "vasc": 3, "akiec": 5, "bcc": 7}


def source_manifest() -> Manifest:
    """Lesions of 1-3 images each; two lesions share a byte-identical file (a re-shipped copy)."""
    rows = []
    for label, lesions in CLASSES.items():
        for i in range(lesions):
            group = f"{label}-L{i}"
            for j in range(1 + (i % 3)):
                rows.append(ManifestRow(f"{group}-{j}.jpg", group, label, "train",
                                        f"{group}-{j}".ljust(64, "0")))
    rows.append(ManifestRow("copy-of-mel-L0-0.jpg", "other-lesion", "mel", "train",
                            "mel-L0-0".ljust(64, "0")))
    return Manifest(Path("/data"), "labels_csv", "isic2018", 0, (0.7, 0.15, 0.15), rows)


def test_every_image_is_tested_once_and_no_lesion_straddles_splits() -> None:
    source = source_manifest()
    folds = fold_manifests(source, 5, seed=3)
    assert len(folds) == 5
    tested = Counter(r.image for fold in folds for r in fold.subset("test"))
    assert tested == Counter(r.image for r in source.rows)  # each image exactly once
    for fold in folds:
        splits_of = {}
        for r in fold.rows:
            splits_of.setdefault(r.group, set()).add(r.split)
        assert all(len(s) == 1 for s in splits_of.values())
        copies = {r.split for r in fold.rows if r.sha256 == "mel-L0-0".ljust(64, "0")}
        assert len(copies) == 1  # the re-shipped copy sits where its twin does
        assert fold.subset("val") and fold.subset("train")
        assert [(r.image, r.label, r.sha256) for r in fold.rows] == \
            [(r.image, r.label, r.sha256) for r in source.rows]
    assert len({fold.split_hash for fold in folds}) == 5


def test_each_fold_tests_a_fair_share_of_every_class() -> None:
    folds = fold_manifests(source_manifest(), 4, seed=0)
    for label, lesions in CLASSES.items():
        per_fold = [len({r.group for r in fold.subset("test") if r.label == label})
                    for fold in folds]
        assert set(per_fold) <= {lesions // 4, lesions // 4 + 1}, (label, per_fold)


def test_folds_are_reproducible_and_change_with_the_seed() -> None:
    a = [f.split_hash for f in fold_manifests(source_manifest(), 3, seed=1)]
    assert a == [f.split_hash for f in fold_manifests(source_manifest(), 3, seed=1)]
    assert a != [f.split_hash for f in fold_manifests(source_manifest(), 3, seed=2)]


@pytest.mark.parametrize("k", [1, 1000])
def test_an_impossible_number_of_folds_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match=f"folds={k}: choose from 2 to the number of lesions"):
        fold_manifests(source_manifest(), k)
