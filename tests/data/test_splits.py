"""Grouped, stratified splits: no lesion in two splits, class balance kept, reproducible."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from skinedge.data.records import Record
from skinedge.data.splits import SPLITS, split_groups

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
