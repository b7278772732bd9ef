"""Grouped, stratified splits: no lesion in two splits, class balance kept, reproducible."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from skinedge.data.manifest import ManifestRow
from skinedge.data.records import Record
from skinedge.data.splits import SPLITS, sparse_class_warnings, split_groups

#: groups per class: plenty, some, just enough for all three splits, and too few.
GROUPS_PER_CLASS = {"nv": 60, "mel": 40, "bkl": 20, "bcc": 9, "akiec": 4, "df": 3, "vasc": 2}
RATIOS = (0.7, 0.15, 0.15)


def _records() -> list[Record]:
    """1-3 images per lesion, as in HAM10000."""
    records = []
    for label, n_groups in GROUPS_PER_CLASS.items():
        for g in range(n_groups):
            group = f"HAM_{label}_{g:03d}"
            for k in range(1 + g % 3):
                records.append(Record(f"images/{group}_{k}.jpg", group, label, f"labels.csv:{k}"))
    return records


RECORDS = _records()


def _splits_by_class(assignment: dict[str, str]) -> dict[str, Counter]:
    """label -> Counter(split -> groups)."""
    label_of = {r.group: r.label for r in RECORDS}
    table: dict[str, Counter] = defaultdict(Counter)
    for group, split in assignment.items():
        table[label_of[group]][split] += 1
    return table


def test_every_group_lands_in_exactly_one_split():
    assignment = split_groups(RECORDS, RATIOS, seed=0)

    assert set(assignment) == {r.group for r in RECORDS}
    assert set(assignment.values()) == set(SPLITS)
    groups_in = {s: {g for g, split in assignment.items() if split == s} for s in SPLITS}
    assert not groups_in["train"] & groups_in["val"]
    assert not groups_in["train"] & groups_in["test"]
    assert not groups_in["val"] & groups_in["test"]
    # Image level: all images of a lesion share its split.
    splits_of_group = defaultdict(set)
    for r in RECORDS:
        splits_of_group[r.group].add(assignment[r.group])
    assert all(len(s) == 1 for s in splits_of_group.values())


def test_group_with_mixed_labels_follows_its_most_frequent_label():
    records = [
        Record("a1.jpg", "L1", "mel", "x:1"), Record("a2.jpg", "L1", "mel", "x:2"),
        Record("a3.jpg", "L1", "nv", "x:3"),
        *[Record(f"b{i}.jpg", f"N{i}", "nv", f"y:{i}") for i in range(5)],
    ]

    assignment = split_groups(records, RATIOS, seed=0)

    assert set(assignment) == {"L1", *[f"N{i}" for i in range(5)]}
    # L1 is the only "mel" group: bucketed alone, it goes to train (0.7 of 1 rounds up).
    assert assignment["L1"] == "train"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_ratios_follow_the_split_ratios(seed):
    table = _splits_by_class(split_groups(RECORDS, RATIOS, seed=seed))

    for label, n_groups in GROUPS_PER_CLASS.items():
        if n_groups < 20:
            continue
        for split, ratio in zip(SPLITS, RATIOS):
            # Largest-remainder rounding: at most one group off the exact share.
            assert abs(table[label][split] - ratio * n_groups) <= 1, (label, split, table[label])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_with_three_groups_is_in_every_split(seed):
    table = _splits_by_class(split_groups(RECORDS, RATIOS, seed=seed))

    for label, n_groups in GROUPS_PER_CLASS.items():
        assert sum(table[label].values()) == n_groups
        if n_groups >= 3:
            assert all(table[label][s] >= 1 for s in SPLITS), (label, table[label])
    assert table["vasc"]["train"] >= 1  # two groups cannot fill three splits; train comes first


def test_image_counts_are_near_the_ratios():
    assignment = split_groups(RECORDS, RATIOS, seed=0)

    images = Counter(assignment[r.group] for r in RECORDS)
    for split, ratio in zip(SPLITS, RATIOS):
        assert images[split] / len(RECORDS) == pytest.approx(ratio, abs=0.05)


def test_same_seed_same_split_other_seed_other_split():
    first = split_groups(RECORDS, RATIOS, seed=7)

    assert split_groups(RECORDS, RATIOS, seed=7) == first
    assert split_groups(list(reversed(RECORDS)), RATIOS, seed=7) == first  # row order is irrelevant
    assert split_groups(RECORDS, RATIOS, seed=8) != first


def test_zero_ratio_leaves_a_split_empty():
    assignment = split_groups(RECORDS, (0.8, 0.2, 0.0), seed=0)

    assert "test" not in assignment.values()
    assert Counter(assignment.values())["val"] > 0


@pytest.mark.parametrize("ratios", [
    (0.7, 0.2, 0.2),  # sums to 1.1
    (0.7, 0.3),  # two numbers
    (0.5, 0.25, 0.15, 0.1),  # four numbers
    (1.2, -0.1, -0.1),  # negative
])
def test_bad_ratios_raise(ratios):
    with pytest.raises(ValueError, match="three non-negative numbers summing to 1"):
        split_groups(RECORDS, ratios, seed=0)


# --------------------------------------------------------------------------- sparse classes

CODES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")


def _rows(spec: dict[str, list[tuple[str, str]]]) -> list[ManifestRow]:
    """label -> [(group, split), ...], one image per entry."""
    return [ManifestRow(f"images/{label}_{i}.jpg", group, label, split, "0" * 64)
            for label, entries in spec.items() for i, (group, split) in enumerate(entries)]


def test_sparse_classes_are_warned_about_naming_the_class_and_the_missing_splits():
    plenty = [(f"L{i}", s) for i, s in enumerate(SPLITS * 2)]
    rows = _rows({
        "mel": plenty, "nv": plenty,
        "bkl": [("B0", "train")],  # one image
        "df": [("D0", "val"), ("D0", "val")],  # one lesion
        "vasc": [("V0", "train"), ("V1", "val")],  # two lesions: no test
    })

    warnings = sparse_class_warnings(rows, CODES, RATIOS)

    assert warnings[0].startswith("2 class(es) have no images: bcc, akiec;")
    assert "class 'bkl' has only 1 image (images/bkl_0.jpg), in train" in warnings[1]
    assert "class 'df' has 2 images of one lesion/patient (D0), all in val" in warnings[2]
    assert "class 'vasc' has 2 lesions/patients (2 images): too few for every split, none in " \
        "test" in warnings[3]
    assert all("split again" in w for w in warnings[1:])
    assert len(warnings) == 4  # mel and nv are fine


def test_a_split_with_ratio_zero_is_not_missed():
    rows = _rows({c: [("A", "train"), ("B", "val")] for c in CODES})

    assert sparse_class_warnings(rows, CODES, (0.8, 0.2, 0.0)) == []
    assert len(sparse_class_warnings(rows, CODES, RATIOS)) == len(CODES)


def test_split_prints_and_saves_the_class_warnings(make_labels_folder, tmp_path):
    from typer.testing import CliRunner

    from skinedge.cli.main import app
    from skinedge.data import load_manifest

    folder = make_labels_folder(per_class=4, codes=("mel", "nv", "bkl", "df"))
    labels = (folder / "labels.csv").read_text().splitlines()
    # One df image, one bkl lesion (two images); mel and nv keep two lesions each.
    kept = [row for row in labels if not row.startswith(("images/df_", "images/bkl_"))
            or row.startswith(("images/df_000", "images/bkl_000", "images/bkl_001"))]
    (folder / "labels.csv").write_text("\n".join(kept) + "\n")

    result = CliRunner().invoke(app, ["data", "split", str(folder), "--out",
                                      str(tmp_path / "manifest.json"), "--no-check-images"])

    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "manifest.json")
    warnings = manifest.class_warnings()
    printed = " ".join(result.output.split())
    assert all(f"warning: {' '.join(w.split())}" in printed for w in warnings), printed
    assert "3 class(es) have no images: bcc, akiec, vasc" in warnings[0]
    assert any(w.startswith("class 'bkl' has 2 images of one lesion/patient (L_bkl_000)")
               for w in warnings)
    assert any(w.startswith("class 'df' has only 1 image (images/df_000.jpg)") for w in warnings)
    assert any(w.startswith("class 'mel' has 2 lesions/patients (4 images)") for w in warnings)
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["class_warnings"] == warnings
